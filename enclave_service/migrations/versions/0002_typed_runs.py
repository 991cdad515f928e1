"""Typed runs: reports, collaborators and manifests as JSON columns (an empty report is NULL, not
''), and the number of records in the staged input data (for the unaggregated-table rule).

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.execute("UPDATE runs SET collaborators = '[]' WHERE collaborators = '' OR collaborators IS NULL")
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("code_report", type_=sa.JSON, existing_type=sa.Text, nullable=True)
        batch.alter_column("output_report", type_=sa.JSON, existing_type=sa.Text, nullable=True)
        batch.alter_column("collaborators", type_=sa.JSON, existing_type=sa.Text)
        batch.add_column(sa.Column("input_records", sa.Integer, nullable=True))
    # an empty report was '' (not JSON); now it is NULL
    op.execute("UPDATE runs SET code_report = NULL WHERE code_report = ''")
    op.execute("UPDATE runs SET output_report = NULL WHERE output_report = ''")
    with op.batch_alter_table("releases") as batch:
        batch.alter_column("manifest", type_=sa.JSON, existing_type=sa.Text)


def downgrade():
    op.execute("UPDATE runs SET code_report = '' WHERE code_report IS NULL")
    op.execute("UPDATE runs SET output_report = '' WHERE output_report IS NULL")
    with op.batch_alter_table("releases") as batch:
        batch.alter_column("manifest", type_=sa.Text, existing_type=sa.JSON)
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("input_records")
        batch.alter_column("collaborators", type_=sa.Text, existing_type=sa.JSON)
        batch.alter_column("output_report", type_=sa.Text, existing_type=sa.JSON, nullable=False)
        batch.alter_column("code_report", type_=sa.Text, existing_type=sa.JSON, nullable=False)
