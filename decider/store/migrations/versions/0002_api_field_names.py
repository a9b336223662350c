"""SQL columns take the API's field names (proto/decider/v1/decider.proto) where they differed.

| table | before | after | API field |
|---|---|---|---|
| decisions | resolution_comment | comment | Approval.comment |
| decisions | shadow_revision | shadow_bundle_revision | DecisionRecord.shadow_bundle.revision |
| bundles | stored_at | loaded_at | BundleInfo.loaded_at |
| bundle_activations | at | activated_at | BundleInfo.activated_at |

`recreate="never"`: on SQLite (3.25+) a rename is a native `ALTER TABLE … RENAME COLUMN`, which
keeps every row, index and partial-index condition in place and costs nothing on a large
decision log; a batch "move and copy" would rewrite the whole table. On PostgreSQL it is the
same statement.

Revision ID: 0002_api_field_names
Revises: 0001_baseline
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0002_api_field_names"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

RENAMES = (
    ("decisions", "resolution_comment", "comment"),
    ("decisions", "shadow_revision", "shadow_bundle_revision"),
    ("bundles", "stored_at", "loaded_at"),
    ("bundle_activations", "at", "activated_at"),
)


def upgrade() -> None:
    for table, old, new in RENAMES:
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.alter_column(old, new_column_name=new)


def downgrade() -> None:
    for table, old, new in reversed(RENAMES):
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.alter_column(new, new_column_name=old)
