"""task resources: cores, memory, walltime, the GPU request and the excluded sites as columns

Brokerage and job creation read these columns instead of parsing the task's
parameters (and its architecture string) again on every cycle. Rows that exist
are filled from their stored parameters here, as the code before this revision
read them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 09:00:00
"""
from __future__ import annotations

import json
import re
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

BATCH = 500

tasks = sa.table(
    'tasks',
    sa.column('id', sa.Integer()),
    sa.column('params', sa.JSON()),
    sa.column('architecture', sa.String()),
    sa.column('cores', sa.Integer()),
    sa.column('memory_mb', sa.Integer()),
    sa.column('walltime_s', sa.Integer()),
    sa.column('gpu_request', sa.JSON(none_as_null=True)),
    sa.column('excluded_sites', sa.JSON()),
)


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cores', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('memory_mb', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('walltime_s', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('gpu_request', sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(
            sa.Column('excluded_sites', sa.JSON(), server_default='[]', nullable=False)
        )
    backfill(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('excluded_sites')
        batch_op.drop_column('gpu_request')
        batch_op.drop_column('walltime_s')
        batch_op.drop_column('memory_mb')
        batch_op.drop_column('cores')


def backfill(connection: sa.Connection) -> None:
    """Fill the new columns of every existing task, a batch of rows at a time."""
    update = (
        tasks.update()
        .where(tasks.c.id == sa.bindparam('b_id'))
        .values(
            cores=sa.bindparam('b_cores'),
            memory_mb=sa.bindparam('b_memory_mb'),
            walltime_s=sa.bindparam('b_walltime_s'),
            gpu_request=sa.bindparam('b_gpu_request', type_=sa.JSON(none_as_null=True)),
            excluded_sites=sa.bindparam('b_excluded_sites', type_=sa.JSON()),
        )
    )
    last = 0
    while True:
        rows = connection.execute(
            sa.select(tasks.c.id, tasks.c.params, tasks.c.architecture)
            .where(tasks.c.id > last)
            .order_by(tasks.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        connection.execute(update, [columns(row.id, row.params, row.architecture) for row in rows])
        last = rows[-1].id


def columns(task_id: int, params: Any, architecture: str | None) -> dict[str, Any]:
    """The new columns of one task, as job creation and brokerage derived them before."""
    params = params if isinstance(params, dict) else {}
    return {
        'b_id': task_id,
        'b_cores': int(params.get('coreCount') or 1),
        'b_memory_mb': int(params.get('ramCount') or 0),
        'b_walltime_s': int(params.get('maxWalltime') or 0),
        'b_gpu_request': gpu_request(architecture),
        'b_excluded_sites': list(params.get('excludedSite') or []),
    }


# -- the GPU request of an architecture string, frozen as of this revision ----------------
#
# A copy of harvester/architecture.py's parse_architecture, reduced to its result: a
# migration imports nothing of the harvester (import contracts), and must give the same
# result whatever that module becomes. Every stored string passed the parser when it was
# submitted; one that no longer parses stays a CPU request, as brokerage treated it.

VENDORS = ('nvidia', 'amd', 'intel')
_SIMPLE = re.compile(r'^(?P<vendor>[a-z]+)-gpu$')
_CPU_ONLY = re.compile(r'^[A-Za-z0-9_.\-]*(@[A-Za-z0-9_.\-]*)?(#[A-Za-z0-9_.\-]*)?$')
_CONDITION = re.compile(r'^(?P<key>[a-z_]+)\s*(?P<op>>=|!=|=)\s*(?P<value>.+)$')
_VRAM = re.compile(r'^(?P<number>\d+(\.\d+)?)\s*(?P<unit>|m|mb|mib|g|gb|gib)$', re.IGNORECASE)


class _Unparsable(ValueError):
    pass


def gpu_request(value: str | None) -> dict[str, Any] | None:
    """The normalised GPU request (GpuRequest.to_document's form), or None for none."""
    try:
        return _parse(value)
    except _Unparsable:
        return None


def _request(vendor: str, **fields: Any) -> dict[str, Any]:
    document = {
        'vendor': vendor,
        'model': None,
        'model_negated': False,
        'min_cuda': None,
        'min_vram_mb': None,
        'microarchitecture': None,
        'min_driver': None,
    }
    document.update(fields)
    return document


def _parse(value: str | None) -> dict[str, Any] | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    simple = _SIMPLE.match(text)
    if simple:
        return _request(_vendor(simple['vendor']))
    if text.startswith('{'):
        return _json_form(text)
    if '&' in text:
        cpu_part, gpu_part = text.split('&', 1)
        if not _CPU_ONLY.match(cpu_part):
            raise _Unparsable(value)
        return _shorthand(gpu_part)
    if _CPU_ONLY.match(text):
        return None
    raise _Unparsable(value)


def _vendor(name: str) -> str:
    vendor = name.strip().lower()
    if vendor not in VENDORS:
        raise _Unparsable(name)
    return vendor


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise _Unparsable(pattern) from exc
    return pattern


def _version(text: str) -> list[int]:
    if not re.fullmatch(r'\d+(\.\d+)*', text.strip()):
        raise _Unparsable(text)
    return [int(p) for p in text.strip().split('.')]


def _vram(text: str) -> int:
    match = _VRAM.match(str(text).strip())
    if not match:
        raise _Unparsable(text)
    number = float(match.group('number'))
    mib = number * 1024 if match.group('unit').lower().startswith('g') else number
    if mib < 1 or mib > 16 * 1024 * 1024:
        raise _Unparsable(text)
    return int(mib)


def _shorthand(gpu_part: str) -> dict[str, Any]:
    parts = gpu_part.split(':')
    vendor = _vendor(parts[0])
    fields: dict[str, Any] = {}
    for condition in parts[1:]:
        match = _CONDITION.match(condition.strip())
        if not match:
            raise _Unparsable(condition)
        key, op_, val = match.group('key'), match.group('op'), match.group('value').strip()
        if key == 'model' and op_ in ('=', '!='):
            fields['model'] = _regex(val)
            fields['model_negated'] = op_ == '!='
        elif key == 'cuda' and op_ == '>=':
            fields['min_cuda'] = _version(val)
        elif key == 'vram' and op_ == '>=':
            fields['min_vram_mb'] = _vram(val)
        elif key in ('uarch', 'microarchitecture') and op_ == '=':
            fields['microarchitecture'] = val
        elif key in ('driver', 'driver_version') and op_ == '>=':
            fields['min_driver'] = _version(val)
        else:
            raise _Unparsable(condition)
    return _request(vendor, **fields)


def _json_form(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Unparsable(text) from exc
    spec = document.get('gpu_spec') if isinstance(document, dict) else None
    if not isinstance(spec, dict):
        raise _Unparsable(text)
    known = {'vendor', 'model', 'version', 'vram', 'microarchitecture', 'driver_version'}
    if set(spec) - known:
        raise _Unparsable(text)
    return _request(
        _vendor(str(spec.get('vendor', 'nvidia'))),
        model=_regex(str(spec['model'])) if spec.get('model') else None,
        min_cuda=_version(str(spec['version'])) if spec.get('version') else None,
        min_vram_mb=_vram(str(spec['vram'])) if spec.get('vram') is not None else None,
        microarchitecture=str(spec['microarchitecture'])
        if spec.get('microarchitecture')
        else None,
        min_driver=_version(str(spec['driver_version'])) if spec.get('driver_version') else None,
    )
