"""``medlake audit`` and ``medlake vault``: thin wrappers over governance.audit and governance.vault.

Keys are loaded here, from the settings' key folder or the environment, and passed down:
``MEDLAKE_AUDIT_KEY`` (hex) or ``<keys>/audit.key``; ``MEDLAKE_VAULT_KEYS`` (JSON ``{key_id: hex}``,
the active key named by ``MEDLAKE_VAULT_ACTIVE_KEY`` or listed last) or ``<keys>/vault/``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medlake.commands.principal import RoleOpt, acting_as, table_fits
from medlake.config import Settings, lake_root, load_settings
from medlake.governance import at_rest, audit, vault
from medlake.governance.access import Policy, PolicyError
from medlake.governance.crypto import KeyringError
from medlake.governance.vault import VAULT_ACTIVE_KEY_ENV, VAULT_KEYS_ENV, vault_keyring
from medlake.keys import KeyMissing, audit_key
from medlake.lake import Lake

audit_app = typer.Typer(help="The tamper-evident audit log: verify it, list it.", no_args_is_help=True)
vault_app = typer.Typer(
    help="The pseudonym vault: request, approve and perform a re-identification; rotate the vault key.",
    no_args_is_help=True,
)

console = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)

LakeOpt = Annotated[
    Path, typer.Option("--lake", help="Lake root: a folder or s3://bucket/prefix.", parser=lake_root)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]{escape(message)}[/red]")
    return typer.Exit(code)


def _policy(settings: Settings) -> Policy:
    try:
        return Policy.load(settings.access.policy_file)
    except (PolicyError, OSError) as exc:
        raise _fail(f"cannot load the access policy: {exc}", code=2) from exc


def _as_reidentifier(settings: Settings, lake: Lake, key: bytes, role: str | None, person: str) -> tuple[str, str]:
    """(principal id, role): the role must be one the principal holds; refused and audited otherwise."""
    policy = _policy(settings)
    principal, acting = acting_as(settings, lake, policy, key, role or vault.REIDENTIFIER,
                                  object=f"{vault.TABLE}/{person}")
    return principal.id, acting


@audit_app.command("verify")
def audit_verify(lake: LakeOpt, as_json: JsonOpt = False) -> None:
    """Walk the audit log's hash chain and signed head: exit 0 when intact, 1 naming the first broken entry.

    Detects edited, deleted, inserted, reordered and forged entries, a removed tail, and a wrong key.
    Exit 2 when the audit key is missing.

    Example: medlake audit verify --lake .medlake/demo/lake
    """
    settings = load_settings(lake=lake)
    target = Lake(lake.resolve())
    if not target.path(audit.TABLE).exists():
        result = audit.Verification(ok=True, entries=0)
    else:
        try:
            key = audit_key(settings, create=False)
        except KeyMissing as exc:
            raise _fail(f"cannot verify the audit log: {exc}", code=2) from exc
        result = audit.verify(target, key=key)
    if as_json:
        _print_json(result.as_dict())
    elif result.ok:
        console.print(f"audit log intact: {result.entries} entries, signed head at entry {result.head_seq}")
    else:
        where = f"entry {result.first_broken_seq}" if result.first_broken_seq is not None else "the log"
        err.print(f"[red]audit log BROKEN at {where}:[/red] {escape(result.problem or '')}")
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("log")
def audit_log(
    lake: LakeOpt,
    action: Annotated[str | None, typer.Option(help="Only this action, e.g. vault.reidentify.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="The latest N entries.")] = 50,
    role: RoleOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List audit entries, oldest first: who did what to which object, when and why.

    Example: medlake audit log --lake .medlake/demo/lake --action vault.reidentify --json
    """
    settings = load_settings(lake=lake)
    target = Lake(lake.resolve())
    try:
        key = audit_key(settings, create=False)
    except KeyMissing as exc:
        raise _fail(f"cannot read the audit log: {exc}", code=2) from exc
    policy = _policy(settings)
    principal, role = acting_as(settings, target, policy, key, role, object=audit.TABLE,
                                fits=table_fits(policy, audit.TABLE))
    if policy.grant_for(role, audit.TABLE) is None:
        audit.append(target, key=key, actor=principal.id, role=role, action="access.denied", object=audit.TABLE,
                     details={"attempted": "audit.log", "why": f"role {role} has no grant on the audit log"})
        raise _fail(f"refused: role {role!r} may not read the audit log (this attempt was audited)")
    entries = [e for e in audit.read(target) if action is None or e.action == action][-limit:]
    rows = [e.as_dict() for e in entries]
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"{len(rows)} audit entr{'y' if len(rows) == 1 else 'ies'}", title_justify="left")
    columns = ["seq", "at", "actor", "role", "action", "object", "run_id", "purpose", "details"]
    for column in columns:
        table.add_column(column, justify="right" if column == "seq" else "left")
    for row in rows:
        row = {**row, "at": row["at"][:19] + "Z"}  # to the second, for reading
        cells = [row[c] if c != "details" else (json.dumps(row[c], sort_keys=True) if row[c] else None) for c in columns]
        table.add_row(*(escape("" if v is None else str(v)) for v in cells))
    console.print(table)


def _vault_context(lake: Path) -> tuple[Settings, Lake, bytes]:
    settings = load_settings(lake=lake)
    try:
        key = audit_key(settings, create=settings.env == "local")
    except KeyMissing as exc:
        raise _fail(f"cannot use the vault: {exc}", code=2) from exc
    return settings, Lake(lake.resolve()), key


@vault_app.command("request")
def vault_request(
    person_key: Annotated[str, typer.Argument(help="The person_key to re-identify.")],
    reason: Annotated[str, typer.Option(help="Why: recorded in the audit log with the request.")],
    lake: LakeOpt,
    purpose: Annotated[str | None, typer.Option(help="Purpose of use: treatment, operations.")] = None,
    role: RoleOpt = None,
) -> None:
    """File a request to re-identify one person; prints its id for a second reidentifier to approve.

    Example: medlake vault request 3f9c2a7e5b1d4c6a8e0f2b4d6a8c0e1f --reason "ticket 4711: contact patient about result" --lake .medlake/demo/lake
    """
    settings, target, key = _vault_context(lake)
    actor, acting = _as_reidentifier(settings, target, key, role, person_key)
    try:
        request_id = vault.request(target, person_key, role=acting, reason=reason, actor=actor, audit_key=key,
                                   purpose=purpose)
    except vault.AccessDenied as exc:
        raise _fail(f"refused: {exc} (this attempt was audited)") from exc
    console.print(f"request {request_id} filed; another reidentifier approves it with "
                  f"`medlake vault approve {request_id} --lake {lake}`")


@vault_app.command("approve")
def vault_approve(
    request_id: Annotated[str, typer.Argument(help="The request id `medlake vault request` printed.")],
    lake: LakeOpt,
    role: RoleOpt = None,
) -> None:
    """Approve another reidentifier's request (never your own); audited.

    Example: medlake vault approve 9c1e2f3a4b5c6d7e --lake .medlake/demo/lake
    """
    settings, target, key = _vault_context(lake)
    actor, acting = _as_reidentifier(settings, target, key, role, f"request/{request_id}")
    try:
        person = vault.approve(target, request_id, role=acting, actor=actor, audit_key=key)
    except vault.AccessDenied as exc:
        raise _fail(f"refused: {exc} (this attempt was audited)") from exc
    except audit.AuditLogBroken as exc:
        raise _fail(str(exc)) from exc
    console.print(f"request {request_id} (person {person}) approved; audited")


@vault_app.command("reidentify")
def vault_reidentify(
    person_key: Annotated[str, typer.Argument(help="The person_key to re-identify.")],
    reason: Annotated[str, typer.Option(help="Why: recorded in the audit log with the request.")],
    lake: LakeOpt,
    request_id: Annotated[
        str | None, typer.Option("--request", help="Your request, approved by another reidentifier.")
    ] = None,
    break_glass: Annotated[
        bool, typer.Option("--break-glass", help="Emergency without a second approver: raises an alert in the audit log.")
    ] = False,
    purpose: Annotated[str | None, typer.Option(help="Purpose of use: treatment, operations.")] = None,
    role: RoleOpt = None,
) -> None:
    """Print who a person_key is (JSON). Only a principal holding reidentifier, with an approved request
    or --break-glass; every attempt is audited with its reason.

    Example: medlake vault reidentify 3f9c2a7e5b1d4c6a8e0f2b4d6a8c0e1f --reason "ticket 4711: contact patient about result" --request 9c1e2f3a4b5c6d7e --lake .medlake/demo/lake
    """
    settings, target, key = _vault_context(lake)
    actor, acting = _as_reidentifier(settings, target, key, role, person_key)
    try:
        keyring = vault_keyring(settings, create=False)
    except (KeyMissing, KeyringError) as exc:
        raise _fail(f"cannot re-identify: {exc}", code=2) from exc
    try:
        found = vault.reidentify(
            target,
            person_key,
            keyring=keyring,
            role=acting,
            reason=reason,
            actor=actor,
            audit_key=key,
            purpose=purpose,
            request_id=request_id,
            break_glass=break_glass,
        )
    except vault.AccessDenied as exc:
        raise _fail(f"refused: {exc} (this attempt was audited)") from exc
    except (vault.NotInVault, vault.VaultKeyError, audit.AuditLogBroken) as exc:
        raise _fail(str(exc)) from exc
    if break_glass:
        err.print("[yellow]break glass: an alert was written to the audit log for review[/yellow]")
    _print_json(found)


@vault_app.command("rotate-key")
def vault_rotate_key(
    lake: LakeOpt,
    new_key_id: Annotated[
        str | None,
        typer.Option(help="Id of the new key (default: a fresh one). With MEDLAKE_VAULT_KEYS, add that key there first."),
    ] = None,
    keep_old_keys: Annotated[bool, typer.Option(help="Leave the old keys in the keyring (default: retire them).")] = False,
    role: RoleOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-encrypt every vault row under a new key (person_keys unchanged) and re-wrap the data keys
    of the raw PHI encrypted at rest under it; crash-safe, audited.

    Example: medlake vault rotate-key --lake .medlake/demo/lake
    """
    settings = load_settings(lake=lake)
    try:
        key = audit_key(settings, create=settings.env == "local")
        keyring = vault_keyring(settings, create=settings.env == "local")
    except (KeyMissing, KeyringError) as exc:
        raise _fail(f"cannot rotate the vault key: {exc}", code=2) from exc
    principal, acting = acting_as(settings, Lake(lake.resolve()), _policy(settings), key, role or "data_engineer",
                                  object=vault.TABLE)
    try:
        with err.status("re-encrypting the vault, re-wrapping the data keys…"):
            rotation = at_rest.rotate_key(
                Lake(lake.resolve()),
                keyring=keyring,
                audit_key=key,
                actor=principal.id,
                role=acting,
                new_key_id=new_key_id,
                retire_old=not keep_old_keys,
            )
    except (KeyringError, vault.VaultKeyError, vault.VaultChanged, at_rest.AtRestKeyError, audit.AuditLogBroken) as exc:
        raise _fail(f"rotation stopped, every row is still readable: {exc}") from exc
    summary = {
        "new_key_id": rotation.new_key_id,
        "rows": rotation.rows,
        "from_key_ids": list(rotation.from_key_ids),
        "retired": list(rotation.retired),
        "version": rotation.version,
    }
    if as_json:
        _print_json(summary)
        return
    console.print(
        f"re-encrypted {rotation.rows} vault row(s) from {', '.join(rotation.from_key_ids) or '(none)'} "
        f"to {rotation.new_key_id}; active key is now {rotation.new_key_id}"
    )
    if rotation.retired and rotation.keyring.folder is not None:
        console.print(
            f"retired {', '.join(rotation.retired)} to {rotation.keyring.folder / 'retired'}: "
            "destroy them once no backup needs them"
        )
    elif rotation.retired:
        console.print(
            f"no row needs {', '.join(rotation.retired)} any more: remove them from {VAULT_KEYS_ENV} "
            f"and set {VAULT_ACTIVE_KEY_ENV}={rotation.new_key_id}"
        )
