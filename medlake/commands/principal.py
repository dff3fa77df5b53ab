"""Who runs a command and as which role: the authenticated principal, never a flag.

Every command that reads governed data calls :func:`acting_as`: the principal is the OS user
running medlake (governance/identity.py), its roles come from the access policy, and ``--role``
only chooses among them. A refusal is audited (``access.denied``, ``attempted: assume_role``)
and exits 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from medlake.config import Settings
from medlake.governance import audit
from medlake.governance.access import Policy
from medlake.governance.identity import Principal, RoleRefused, assume_role, os_principal, roles_of
from medlake.lake import Lake

err = Console(stderr=True)

RoleOpt = Annotated[
    str | None,
    typer.Option(
        "--role",
        help="Act as this one of the roles your principal holds (the policy's `principals`); "
        "default: the first that may do this. A role you do not hold is refused and audited.",
    ),
]


def current_principal(settings: Settings) -> Principal:
    """The OS user running this command; the service principal when it owns the key folder."""
    return os_principal(service_dir=settings.keys.dir)


def held_roles(settings: Settings, policy: Policy, principal: Principal) -> tuple[str, ...]:
    held: tuple[str, ...] = roles_of(policy.principals, principal, local=settings.env == "local")
    return held


def acting_as(
    settings: Settings,
    lake: Lake,
    policy: Policy,
    key: bytes,
    requested: str | None,
    *,
    object: str,
    fits: Callable[[str], bool] | None = None,
) -> tuple[Principal, str]:
    """The principal and the role it acts as, or exit 1 after auditing the refusal."""
    principal = current_principal(settings)

    def audit_refusal(exc: RoleRefused) -> None:
        audit.append(lake, key=key, actor=principal.id, role=requested or "none", action="access.denied",
                     object=object, details={"attempted": "assume_role", "why": exc.why})

    try:
        role = assume_role(policy.principals, principal, requested, local=settings.env == "local",
                           fits=fits, on_refusal=audit_refusal)
    except RoleRefused as exc:
        err.print(f"[red]refused: {escape(str(exc))} (this attempt was audited)[/red]")
        raise typer.Exit(1) from exc
    return principal, role


def table_fits(policy: Policy, table: str) -> Callable[[str], bool]:
    """A role fits when a grant of the policy covers ``table``."""
    return lambda role: policy.grant_for(role, table) is not None
