"""The schema as the service made it with create_all before migrations existed.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("analysis_id", sa.String(64), nullable=False, index=True),
        sa.Column("analysis_title", sa.String(500), nullable=False),
        sa.Column("author", sa.String(255), nullable=False, index=True),
        sa.Column("author_email", sa.String(320), nullable=False),
        sa.Column("collaborators", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("state", sa.String(32), nullable=False, index=True),
        sa.Column("failure", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
        sa.Column("archive_sha256", sa.String(64), nullable=False),
        sa.Column("archive_bytes", sa.Integer, nullable=False),
        sa.Column("code_report", sa.Text, nullable=False),
        sa.Column("output_report", sa.Text, nullable=False),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("logs", sa.Text, nullable=False),
        sa.Column("required_approvals", sa.Integer, nullable=False),
        sa.Column("analysis_api_key", sa.String(255), nullable=False),
        sa.Column("kinetic_run_key", sa.String(255), nullable=False),
        sa.Column("kinetic_run_id", sa.String(64), nullable=False),
        sa.Column("kinetic_signed_id", sa.String(255), nullable=False),
        sa.Column("kinetic_completed", sa.String(16), nullable=False),
        sa.Column("mail_sent", sa.Boolean, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("reviewer", sa.String(255), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.UniqueConstraint("run_id", "reviewer", name="one_review_per_reviewer"),
    )
    op.create_table(
        "releases",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
    )
    op.create_table(
        "downloads",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("ip", sa.String(64), nullable=False),
        sa.Column("time", sa.Float, nullable=False),
    )


def downgrade():
    for table in ("downloads", "releases", "reviews", "events", "runs"):
        op.drop_table(table)
