"""Who is acting: an authenticated principal, the roles the policy gives it, and the one it acts as.

A role is never self-declared. The principal is established by the platform, not by a flag:

- locally (``medlake`` run in a shell), the operating system user running the process
  (``os.getuid()``) and its groups, looked up in ``pwd``/``grp``;
- in production, behind the API server, a verified bearer token or OIDC subject
  (``oidc:<issuer>#<subject>``, ``token:<name>``): the server authenticates the caller and
  passes the :class:`Principal` down; the same policy maps it to roles.

The policy's ``principals`` section maps ``user:<login>``, ``group:<group>``, ``oidc:…`` and
``token:…`` to roles, plus ``local_owner``: the roles the service principal (the OS user that
owns the key folder) holds in ``MEDLAKE_ENV=local``, so a single-user demo works with no
configuration. ``--role`` may only choose among the roles the principal holds; asking for any
other is refused and audited (``access.denied``, ``attempted: assume_role``).

    principal = os_principal(service_dir=settings.keys.dir)
    role = assume_role(policy, principal, "ml", local=True, on_refusal=audit_refusal)
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PrincipalKind = Literal["user", "oidc", "token"]

#: the policy key that names the roles of the service principal in the local profile
LOCAL_OWNER = "local_owner"


class RoleRefused(PermissionError):
    """The principal asked for a role it does not hold (or holds none that fits); audited."""

    def __init__(self, principal: str, role: str | None, why: str) -> None:
        self.principal = principal
        self.role = role
        self.why = why
        super().__init__(why)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: an OS user with its groups, or an API token / OIDC subject."""

    kind: PrincipalKind
    name: str
    groups: tuple[str, ...] = ()
    uid: int | None = None
    #: the principal that owns the project's keys (the service account); local profile only
    is_service: bool = False

    @property
    def id(self) -> str:
        """How the principal is named in the policy and the audit log: ``user:ana``."""
        return f"{self.kind}:{self.name}"

    def policy_ids(self) -> tuple[str, ...]:
        """Every name the policy may grant roles to: the principal itself, then its groups."""
        return (self.id, *(f"group:{g}" for g in self.groups))


def os_principal(*, service_dir: Path | None = None) -> Principal:
    """The operating-system user running this process and its groups (``pwd``/``grp``).

    ``service_dir`` is the key folder: the principal owning it is the service principal.
    """
    uid = os.getuid()
    try:
        entry = pwd.getpwuid(uid)
        name, gid = entry.pw_name, entry.pw_gid
    except KeyError:  # a uid with no passwd entry (some containers): named by its number
        name, gid = f"uid{uid}", os.getgid()
    gids = set(os.getgroups()) | {gid}
    try:
        gids |= set(os.getgrouplist(name, gid))
    except (KeyError, OSError):
        pass
    groups = []
    for g in sorted(gids):
        try:
            groups.append(grp.getgrgid(g).gr_name)
        except KeyError:
            groups.append(f"gid{g}")
    is_service = bool(service_dir is not None and service_dir.exists() and service_dir.stat().st_uid == uid)
    return Principal(kind="user", name=name, groups=tuple(groups), uid=uid, is_service=is_service)


def roles_of(principals: Mapping[str, Sequence[str]], principal: Principal, *, local: bool) -> tuple[str, ...]:
    """The roles the policy's ``principals`` map gives ``principal``, in the order they are granted."""
    held: list[str] = []
    for pid in principal.policy_ids():
        held.extend(principals.get(pid, ()))
    if local and principal.is_service:
        held.extend(principals.get(LOCAL_OWNER, ()))
    return tuple(dict.fromkeys(held))


def assume_role(
    principals: Mapping[str, Sequence[str]],
    principal: Principal,
    requested: str | None,
    *,
    local: bool,
    fits: Callable[[str], bool] | None = None,
    on_refusal: Callable[[RoleRefused], None] | None = None,
) -> str:
    """The role ``principal`` acts as: ``requested`` when it holds it, else the first held role that ``fits``.

    A flag only narrows: a role the principal does not hold is refused. ``on_refusal`` is called
    (to audit) before :class:`RoleRefused` is raised.
    """
    held = roles_of(principals, principal, local=local)

    def refuse(why: str) -> RoleRefused:
        exc = RoleRefused(principal.id, requested, why)
        if on_refusal is not None:
            on_refusal(exc)
        return exc

    if requested is not None:
        if requested not in held:
            raise refuse(
                f"{principal.id} may not act as role {requested!r}: the policy gives it "
                + (", ".join(held) if held else "no role")
            )
        return requested
    candidates = [r for r in held if fits is None or fits(r)]
    if not candidates:
        raise refuse(
            f"{principal.id} holds no role that may do this (it holds {', '.join(held) or 'none'})"
        )
    return candidates[0]
