"""Typed runs: reports, collaborators and manifests as JSON columns (an empty report is NULL, not
''), and the number of records in the staged input data (for the unaggregated-table rule).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


JSON_COLUMNS = ("code_report", "output_report", "collaborators")


def upgrade():
    # '' meant "no report" and is not JSON: make it NULL while the columns are still text. (On
    # PostgreSQL a json column has no '=' and text casts to json only with USING; SQLite copies
    # the table in batch mode and takes either order.)
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("code_report", existing_type=sa.Text, nullable=True)
        batch.alter_column("output_report", existing_type=sa.Text, nullable=True)
    op.execute("UPDATE runs SET code_report = NULL WHERE code_report = ''")
    op.execute("UPDATE runs SET output_report = NULL WHERE output_report = ''")
    op.execute("UPDATE runs SET collaborators = '[]' WHERE collaborators = '' OR collaborators IS NULL")
    with op.batch_alter_table("runs") as batch:
        for column in JSON_COLUMNS:
            batch.alter_column(
                column, type_=sa.JSON, existing_type=sa.Text, postgresql_using=f"{column}::json"
            )
        batch.add_column(sa.Column("input_records", sa.Integer, nullable=True))
    with op.batch_alter_table("releases") as batch:
        batch.alter_column(
            "manifest", type_=sa.JSON, existing_type=sa.Text, postgresql_using="manifest::json"
        )


def downgrade():
    with op.batch_alter_table("releases") as batch:
        batch.alter_column(
            "manifest", type_=sa.Text, existing_type=sa.JSON, postgresql_using="manifest::text"
        )
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("input_records")
        for column in JSON_COLUMNS:
            batch.alter_column(
                column, type_=sa.Text, existing_type=sa.JSON, postgresql_using=f"{column}::text"
            )
    op.execute("UPDATE runs SET code_report = '' WHERE code_report IS NULL")
    op.execute("UPDATE runs SET output_report = '' WHERE output_report IS NULL")
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("code_report", existing_type=sa.Text, nullable=False)
        batch.alter_column("output_report", existing_type=sa.Text, nullable=False)
