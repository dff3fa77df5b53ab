"""medlake: a lakehouse for medical data, run by DAGs.

The Python read path for people and notebooks is :func:`read_table`: it enforces the access
policy (role, purpose of use, columns, row filters) and audits what it must, like the CLI does.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["read_table"]


def read_table(
    name: str,
    *,
    role: str,
    purpose: str,
    lake: Path | str | None = None,
    columns: Sequence[str] | None = None,
    version: int | None = None,
    actor: str | None = None,
) -> pa.Table:
    """The rows of table ``name`` that ``role`` may see for ``purpose`` (denials raise and are audited).

    Example: ``medlake.read_table("gold.ml_patient_features", role="ml", purpose="research", lake="lake")``
    """
    from medlake.config import load_settings
    from medlake.governance.access import Policy
    from medlake.governance.access import read_table as enforced_read
    from medlake.keys import audit_key
    from medlake.lake import Lake

    settings = load_settings(lake=lake)
    return enforced_read(
        Lake(settings.lake.root),
        name,
        role=role,
        purpose=purpose,
        actor=actor or getpass.getuser(),
        audit_key=audit_key(settings),
        policy=Policy.load(settings.access.policy_file),
        columns=columns,
        version=version,
    )
