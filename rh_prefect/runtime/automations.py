"""Runs triggered by data: a Prefect Automation that runs a deployment whenever a saved resource gets a new version.

``rh.on_update("/ds/bert_preproc", deployment="finetune/rh-gpu")`` creates (or updates) one Automation:

* its trigger is an event trigger on ``rh.resource.written`` (:mod:`rh_prefect.runtime.events`) for exactly that
  resource's id (``rh.table./ds/bert_preproc``), Reactive, threshold 1: every new version fires it once;
* its action runs the deployment with the resource **by reference** - ``{"$ref": {"block_document_id": ...}}``, the
  form the Prefect UI's block pickers use, resolved with its secrets when the flow run starts (a block passed by
  value would arrive with its secrets masked) - and the new version id, templated from the event
  (``{{ event.resource["rh.version"] }}``), plus any fixed ``parameters``.

A deployment that enforces its parameter schema (Prefect's default) would refuse runs whose parameters do not fit:
that check is made once here, so ``on_update`` fails instead of creating runs that never start.

Which flow parameters receive them: the one typed as the resource's block class (``table: rh.Table``; any kind of
Table matches a Table) and the one named ``version``, read from the deployment's parameter schema; or the names
given as ``resource_parameter=`` / ``version_parameter=``. A deployment without a ``version`` parameter gets the
resource only.

The Automation is Prefect's own (``prefect.automations.Automation``): it is listed, edited, paused and deleted in
the Prefect UI (Automations) like any other, and ``.delete()`` removes it from Python. This module knows no
resource class: the resource's type comes from its registry entry (block type slug).
"""

from __future__ import annotations

import json
from typing import Any, Optional, Union

from rh_prefect import names
from rh_prefect.errors import InvalidArgument, NotFound
from rh_prefect.runtime import events, registry

#: the template of the version parameter: rendered by Prefect from the event that fired the automation
VERSION_TEMPLATE = '{{ event.resource["' + events.LABEL_VERSION + '"] }}'
#: the parameter that receives the new version id when the deployment has it and none is named
DEFAULT_VERSION_PARAMETER = "version"
_VERSIONED = {"rh-table", "rh-blob", "rh-folder"}


def on_update(
    name: Union[str, Any],
    deployment: str,
    parameters: Optional[dict[str, Any]] = None,
    *,
    automation_name: Optional[str] = None,
    resource_parameter: Optional[str] = None,
    version_parameter: Optional[str] = None,
) -> Any:
    """Run ``deployment`` ("flow-name/deployment-name") each time the saved resource ``name`` gets a new version.

    Creates a Prefect Automation (idempotently: the same call again changes nothing; a call with other
    ``parameters`` updates it) and returns it - a ``prefect.automations.Automation`` with its ``id``; call
    ``.delete()`` on it to stop. Each write, append or rollback of the resource then starts one flow run of the
    deployment, whose parameters are ``parameters`` plus:

    * the resource, by reference (secrets survive), in the parameter typed as its block class (``table: rh.Table``,
      ``ckpt: rh.Blob``), or ``resource_parameter``;
    * the new version id in the parameter ``version`` when the flow has one, or ``version_parameter``. The
      resource parameter is loaded when the run starts, so it may describe a later version still: read exactly
      the one that fired with ``rh.table(name=table.name, version=version)``.

    ``name`` is a saved Folder, Table or Blob (its name, or the object). ``automation_name`` names the Automation
    (default ``rh-on-update <name> -> <deployment>``); a call with the same name replaces what it does.

    Raises :class:`~rh_prefect.errors.NotFound` for an unsaved name or an unknown deployment, and
    :class:`~rh_prefect.errors.InvalidArgument` when the parameters cannot be matched or - for a deployment that
    enforces its parameter schema, Prefect's default - would be refused by the server's check of each run (a
    required parameter missing, say); nothing is created then.

    Example:
        ```python
        auto = rh.on_update("/ds/bert_preproc", deployment="rh-bert-fine-tune/rh-gpu", parameters={"epochs": 3})
        auto.delete()      # no more runs
        ```
    """
    from prefect.automations import Automation, EventTrigger, Posture
    from prefect.client.orchestration import get_client
    from prefect.events.actions import RunDeployment

    full, slug, doc_id = _saved_resource(name)
    kind = slug.removeprefix("rh-")
    if not isinstance(deployment, str) or deployment.count("/") != 1 or "" in deployment.split("/"):
        raise InvalidArgument(
            f"deployment must be 'flow-name/deployment-name' (as `prefect deployment ls` lists it), not "
            f"{deployment!r}. No automation was created."
        )
    fixed = _check_parameters(parameters)
    with get_client(sync_client=True) as client:
        dep = _read_deployment(client, deployment)
        schema = dep.parameter_openapi_schema or {}
        resource_param = resource_parameter or _resource_parameter(schema, slug, kind, deployment)
        version_param = version_parameter or (
            DEFAULT_VERSION_PARAMETER if DEFAULT_VERSION_PARAMETER in (schema.get("properties") or {}) else None
        )
        _check_names(schema, deployment, fixed, resource_param, version_param)
        run_parameters = dict(fixed)
        run_parameters[resource_param] = {"$ref": {"block_document_id": str(doc_id)}}
        if getattr(dep, "enforce_parameter_schema", False):
            sample = {version_param: "v-20000101T000000000000Z-00000000"} if version_param else {}
            _check_enforced(schema, {**(dep.parameters or {}), **run_parameters, **sample}, deployment)
        if version_param:
            run_parameters[version_param] = {"__prefect_kind": "jinja", "template": VERSION_TEMPLATE}
        title = automation_name or f"rh-on-update {full} -> {deployment}"
        wanted = Automation(
            name=title,
            description=(
                f"Runs the deployment {deployment} when the rh {kind} {full} gets a new version "
                f"({events.WRITTEN}); made by rh_prefect.on_update."
            ),
            enabled=True,
            trigger=EventTrigger(
                expect={events.WRITTEN},
                match={"prefect.resource.id": events.resource_id(kind, full, "")},
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[RunDeployment(source="selected", deployment_id=dep.id, parameters=run_parameters)],
        )
        found = sorted(client.read_automations_by_name(title), key=lambda a: str(a.id))
        if not found:
            wanted.id = client.create_automation(_core(wanted, {"id"}))
            return wanted
        keep, extra = found[0], found[1:]
        for duplicate in extra:  # made by a concurrent first call: one automation per name
            client.delete_automation(duplicate.id)
        wanted.id = keep.id
        if _comparable(keep) != _comparable(wanted):
            client.update_automation(keep.id, _core(wanted, {"id", "owner_resource"}))  # as Automation.update
        return wanted


def _saved_resource(name: Any) -> tuple[str, str, str]:
    """(canonical name, block type slug, block document id) of the saved resource ``name`` (a name or a saved
    resource object)."""
    if not isinstance(name, str):
        given = getattr(name, "name", None)
        if not isinstance(given, str) or getattr(name, "_block_document_id", None) is None:
            raise NotFound(
                f"on_update() needs a saved Folder, Table or Blob (or its name), not {type(name).__name__} "
                f"{name!r:.80}; save it first with .save('my-name'). No automation was created."
            )
        name = given
    full = names.parse(name).full
    found = registry.find(full)
    if found is None:
        raise NotFound(
            f"No resource named {name!r} is saved, so nothing can announce its new versions: save it first "
            "(rh.table(data, name=...).save()), and check the name with `rh-prefect list`. No automation was created."
        )
    slug, doc_id = found
    if slug not in _VERSIONED:
        raise InvalidArgument(
            f"{name!r} is a {registry.RESOURCE_TYPES.get(slug, slug)}, which holds no data and never changes "
            "version: on_update() takes a saved Folder, Table or Blob. No automation was created."
        )
    return full, slug, doc_id


def _read_deployment(client: Any, deployment: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(deployment)
    except ObjectNotFound:
        raise NotFound(
            f"No deployment {deployment!r} on the Prefect server: register it first (`prefect deploy`, "
            "flow.deploy() or flow.to_deployment(...).apply()) and check the name with `prefect deployment ls` "
            "(it is 'flow-name/deployment-name'). No automation was created."
        ) from None


def _check_parameters(parameters: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The fixed parameters as JSON; saved blocks among them become references (their secrets survive)."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict) or not all(isinstance(k, str) for k in parameters):
        raise InvalidArgument(
            f"parameters must be a dict of parameter name -> value, not {type(parameters).__name__}. "
            "No automation was created."
        )
    out = {k: _by_reference(v, k) for k, v in parameters.items()}
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"parameters must be JSON values (str, numbers, lists, dicts) or saved blocks: {exc}. "
            "No automation was created."
        ) from None
    return out


def _by_reference(value: Any, where: str) -> Any:
    from prefect.blocks.core import Block

    if isinstance(value, Block):
        if value._block_document_id is None:
            raise InvalidArgument(
                f"Parameter {where!r} is a {type(value).__name__} that is not saved: a block passed by value loses "
                "its secrets. Save it first (.save('my-name')). No automation was created."
            )
        return {"$ref": {"block_document_id": str(value._block_document_id)}}
    if isinstance(value, dict):
        return {k: _by_reference(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_by_reference(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _refs(prop: Any) -> list[str]:
    """The ``$ref`` targets a parameter's schema allows directly (``x: Table``, ``Optional[Table]``, a union)."""
    if not isinstance(prop, dict):
        return []
    found = [prop["$ref"]] if isinstance(prop.get("$ref"), str) else []
    for key in ("anyOf", "allOf", "oneOf"):
        for sub in prop.get(key) or []:
            found += _refs(sub)
    return found


def _resource_parameter(schema: dict[str, Any], slug: str, kind: str, deployment: str) -> str:
    definitions = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    matches = [
        pname for pname, prop in (schema.get("properties") or {}).items()
        if any((definitions.get(ref.rsplit("/", 1)[-1]) or {}).get("block_type_slug") == slug for ref in _refs(prop))
    ]
    block = registry.RESOURCE_TYPES[slug]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise InvalidArgument(
            f"The deployment {deployment!r} has no parameter typed as an rh {block} (e.g. `{kind}: rh.{block}`) to "
            f"receive the {kind}: add one to the flow, or name the parameter with resource_parameter='...'. "
            "No automation was created."
        )
    raise InvalidArgument(
        f"The deployment {deployment!r} has several parameters typed as an rh {block} ({', '.join(matches)}): "
        "name the one that receives it with resource_parameter='...'. No automation was created."
    )


def _check_names(schema: dict[str, Any], deployment: str, fixed: dict[str, Any], resource_param: str,
                 version_param: Optional[str]) -> None:
    ours = [p for p in (resource_param, version_param) if p]
    clash = sorted(set(fixed) & set(ours))
    if clash:
        raise InvalidArgument(
            f"parameters also sets {', '.join(clash)}, which on_update() fills from the event (the resource and "
            "its new version); leave it out. No automation was created."
        )
    known = schema.get("properties")
    if not known:
        return  # a deployment without a parameter schema: Prefect checks the names when the run starts
    unknown = sorted(p for p in [*fixed, *ours] if p not in known)
    if unknown:
        raise InvalidArgument(
            f"The deployment {deployment!r} has no parameter {', '.join(map(repr, unknown))}; its parameters are "
            f"{', '.join(known)}. No automation was created."
        )


def _check_enforced(schema: dict[str, Any], parameters: dict[str, Any], deployment: str) -> None:
    """A deployment that enforces its parameter schema: the check the server makes when the automation creates a
    run, made now, so a run that would be refused is an error here and not a run that never starts."""
    from prefect.utilities.schema_tools.validation import validate

    errors = validate(parameters, schema, raise_on_error=False)
    if errors:
        found = "; ".join(f"{'.'.join(map(str, e.path)) or 'parameters'}: {e.message[:200]}" for e in errors[:3])
        raise InvalidArgument(
            f"The deployment {deployment!r} checks its parameters against its schema (enforce_parameter_schema=True), "
            f"and would refuse the runs: {found}. Give the missing parameters with parameters={{...}}; a refused "
            "block reference means the deployment was registered by an older rh-prefect: register it again, or "
            "with enforce_parameter_schema=False. No automation was created."
        )


def _core(automation: Any, leave_out: set[str]) -> Any:
    from prefect.automations import AutomationCore

    return AutomationCore(**automation.model_dump(exclude=leave_out))


def _comparable(automation: Any) -> str:
    """What an automation does, without its ids (a trigger gets a fresh id each time it is built)."""
    data = automation.model_dump(mode="json", include={"name", "description", "enabled", "trigger", "actions",
                                                       "actions_on_trigger", "actions_on_resolve"})
    data["trigger"].pop("id", None)
    return json.dumps(data, sort_keys=True)


__all__ = ["DEFAULT_VERSION_PARAMETER", "VERSION_TEMPLATE", "on_update"]
