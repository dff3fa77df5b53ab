"""medlake: a lakehouse for medical data, run by DAGs.

The Python read path for people and notebooks is :func:`read_table`: it enforces the access
policy (role, purpose of use, columns, row filters) and audits what it must, like the CLI does.
The role is one the caller's principal (the OS user running Python, governance/identity.py)
holds under the policy's ``principals``; it is never taken on trust.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["read_table"]


def read_table(
    name: str,
    *,
    purpose: str,
    role: str | None = None,
    lake: Path | str | None = None,
    columns: Sequence[str] | None = None,
    version: int | None = None,
) -> pa.Table:
    """The rows of table ``name`` that ``role`` may see for ``purpose`` (denials raise and are audited).

    ``role`` must be one the caller's principal holds (default: the first that covers the table);
    another is refused (:class:`medlake.governance.identity.RoleRefused`) and audited.

    Example: ``medlake.read_table("gold.ml_patient_features", role="ml", purpose="research", lake="lake")``
    """
    from medlake.config import load_settings
    from medlake.governance import audit
    from medlake.governance.access import Policy
    from medlake.governance.access import read_table as enforced_read
    from medlake.governance.identity import RoleRefused, assume_role, os_principal
    from medlake.keys import audit_key
    from medlake.lake import Lake

    settings = load_settings(lake=lake)
    target, key = Lake(settings.lake.root), audit_key(settings)
    policy = Policy.load(settings.access.policy_file)
    principal = os_principal(service_dir=settings.keys.dir)

    def refused(exc: RoleRefused) -> None:
        audit.append(target, key=key, actor=principal.id, role=role or "none", action="access.denied",
                     object=name, details={"attempted": "assume_role", "why": exc.why})

    acting = assume_role(policy.principals, principal, role, local=settings.env == "local",
                         fits=lambda r: policy.grant_for(r, name) is not None, on_refusal=refused)
    return enforced_read(
        target,
        name,
        role=acting,
        purpose=purpose,
        actor=principal.id,
        audit_key=key,
        policy=policy,
        columns=columns,
        version=version,
    )
