"""request id and latency on predictions; outcomes

Revision ID: 1b7d3e5a9c20
Revises: f623dc86193f
Create Date: 2026-11-27 22:50:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '1b7d3e5a9c20'
down_revision = 'f623dc86193f'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('latency_ms', sa.Float(), nullable=True))

    op.create_table('outcomes',
    sa.Column('prediction_id', sa.Uuid(), nullable=False),
    sa.Column('survived', sa.SmallInteger(), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['prediction_id'], ['predictions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('prediction_id')
    )


def downgrade():
    op.drop_table('outcomes')
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_column('latency_ms')
        batch_op.drop_column('request_id')
