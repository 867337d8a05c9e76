"""The compare page: `/jobs/{id}/compare` asks for a prompt, its items, seeds and a policy version,
and shows each seed's base | trained images (same noise) with their scores and the trained model's
item masks.

A plain form (POST, then a redirect to `?id=<compare id>`), checked by the same rules as
`POST /v1/jobs/{id}/compare` (api.routes.compare.submit); while the compare is queued or running a
small inline script polls `/v1/jobs/{id}/compare/{compare id}` and reloads when it ends.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from api.deps import SettingsDep, StateDep, get_celery
from api.errors import field_path, status_for
from api.routes.compare import ComparesDep, public, submit
from api.schemas import ComparePublic
from api.web import PageTenant, _html, _owned
from dfusion_core.errors import DFusionError
from reports.html import escape as _e
from reports.html import fmt
from services.compare import MAX_COMPARE_SEEDS, CompareCreate
from services.jobspec import JobSpec
from services.records import CheckpointRecord
from services.state.redis import RedisJobStore
from services.state.types import JobRecord

router = APIRouter(include_in_schema=False)

# Polls the compare (same origin, cookie auth) and reloads once it has ended.
_POLL = """<script>
(function(){const url=%s;async function poll(){try{const r=await fetch(url,{credentials:'same-origin'});
if(r.ok){const c=await r.json();document.getElementById('compare-status').textContent=c.status;
if(c.status==='succeeded'||c.status==='failed'){location.reload();return;}}}catch(e){}setTimeout(poll,1000);}
setTimeout(poll,1000);})();
</script>"""


def _form(job: JobRecord, versions: list[int], values: dict[str, str], error: str = "") -> str:
    spec = JobSpec.model_validate(job.spec)
    first = spec.prompts[0]
    prompt = values.get("prompt", first.text)
    items = values.get("items", ", ".join(first.items))
    seeds = values.get("seeds", "4")
    chosen = values.get("version") or (str(versions[-1]) if versions else "")
    options = "".join(f"<option value='{v}'{' selected' if str(v) == chosen else ''}>v{v}</option>"
                      for v in reversed(versions))
    err = f'<p class="status failed" id="compare-error" role="alert">{_e(error)}</p>' if error else ""
    busy = ("" if job.status.terminal else
            f"<p class='muted' id='compare-busy'>The job is {_e(job.status.value)}: compare once it has finished.</p>")
    return (f"{err}{busy}<form method='post' action='/jobs/{_e(job.job_id)}/compare' id='compare-form'>"
            f"<p><label>prompt <input name='prompt' id='prompt' size='60' value='{_e(prompt)}' required></label></p>"
            f"<p><label>items (words of the prompt, comma-separated) <input name='items' id='items' size='30' "
            f"value='{_e(items)}'></label></p>"
            f"<p><label>seeds (a count up to {MAX_COMPARE_SEEDS}, or seeds: 3, 7) <input name='seeds' id='seeds' "
            f"size='12' value='{_e(seeds)}'></label> <label>policy version <select name='version' id='version'>{options}"
            f"</select></label> <button type='submit' id='compare-submit'>compare</button></p></form>")


def _result(c: ComparePublic) -> str:
    head = (f"<h2>Compare {_e(c.id[:12])} <span id='compare-status' class='status {_e(c.status)}'>{_e(c.status)}</span>"
            f"</h2><p>“{_e(c.prompt)}” · base (v0) against v{c.version} · seeds {_e(', '.join(map(str, c.seeds)))}"
            f"{' · items ' + _e(', '.join(c.items)) if c.items else ''}</p>")
    if c.error:
        head += f'<p class="status failed">{_e(c.error)}</p>'
    if not c.results:
        return head
    head += (f"<p>mean score: base <b id='base-mean'>{fmt(c.base_mean_score)}</b> · trained "
             f"<b id='trained-mean'>{fmt(c.trained_mean_score)}</b></p>")
    rows = []
    for s in c.results:
        masks = "".join(f'<figure style="margin:0;display:inline-block"><img class="mask" src="{_e(m.url)}" '
                        f'alt="mask {_e(m.item)}"><figcaption>{_e(m.item)}</figcaption></figure>' for m in s.masks)
        rows.append(
            f'<tr class="pair compare-row" data-seed="{s.seed}"><td class="muted">seed {s.seed}</td>'
            f'<td><img class="base" src="{_e(s.base_image_url)}" alt="base, seed {s.seed}"><br>base '
            f'<span class="base-score">{fmt(s.base_score)}</span></td>'
            f'<td><img class="trained" src="{_e(s.trained_image_url)}" alt="trained, seed {s.seed}"><br>'
            f'v{c.version} <span class="trained-score">{fmt(s.trained_score)}</span><br>'
            f'<span class="muted gain" title="trained - base">{s.trained_score - s.base_score:+.2e}</span></td>'
            f"<td>{masks or '<span class=muted>–</span>'}</td></tr>")
    return (head + "<table id='compare-results'><tr><th>seed</th><th>base</th><th>trained</th>"
            "<th>trained item masks</th></tr>" + "".join(rows) + "</table>")


def _page(job: JobRecord, state: RedisJobStore, compares: ComparesDep, values: dict[str, str],
          error: str = "", shown: ComparePublic | None = None, status: int = 200) -> HTMLResponse:
    versions = sorted(CheckpointRecord.load(c).version for c in state.list_checkpoints(job.job_id))
    earlier = [c for c in compares.list(job.job_id) if shown is None or c.id != shown.id][-10:]
    links = " · ".join(f"<a href='/jobs/{_e(job.job_id)}/compare?id={_e(c.id)}'>{_e(c.prompt[:30])} "
                       f"(v{c.version}, {_e(c.status.value)})</a>" for c in reversed(earlier))
    body = (f"<h1>Compare job <a href='/jobs/{_e(job.job_id)}'>{_e(job.job_id[:12])}</a> with its base</h1>"
            "<p class='muted'>Each seed is one noise: the base model (adapters off) and the trained policy "
            "denoise it; scores are the job's scorer on the prompt.</p>"
            + _form(job, versions, values, error)
            + (_result(shown) if shown else "")
            + (f"<h2>Earlier compares</h2><p>{links}</p>" if links else ""))
    poll = ""
    if shown is not None and shown.status in ("queued", "running"):
        poll = _POLL % json.dumps(f"/v1/jobs/{job.job_id}/compare/{shown.id}")
    return _html(f"dfusion: compare {job.job_id[:12]}", body + poll, status=status)


def _not_found(job_id: str) -> HTMLResponse:
    return _html("dfusion: not found", f"<h1>No job {_e(job_id)}</h1>", status=404)


def _seeds(text: str) -> int | list[int] | str:
    """'4' -> 4, '3, 7' -> [3, 7]; anything else as it is (CompareCreate then names `seeds`)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        return text
    return int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]


@router.get("/jobs/{job_id}/compare", response_class=HTMLResponse)
def compare_page(job_id: str, tenant: PageTenant, state: StateDep, compares: ComparesDep,
                 id: str | None = None) -> HTMLResponse:  # noqa: A002 - the query parameter's name
    job = _owned(state, job_id, tenant)
    if job is None:
        return _not_found(job_id)
    shown = None
    if id:
        try:
            shown = public(compares.get(job.job_id, id))
        except DFusionError:  # CompareNotFound, or an id that cannot be one
            return _page(job, state, compares, {}, error=f"id: no compare {id} for this job", status=404)
    return _page(job, state, compares, _values(shown) if shown else {}, shown=shown)


def _values(c: ComparePublic) -> dict[str, str]:
    """The form filled in as `c` was asked for, to change one thing and compare again."""
    seeds = str(len(c.seeds)) if c.seeds == list(range(len(c.seeds))) else ", ".join(map(str, c.seeds))
    return {"prompt": c.prompt, "items": ", ".join(c.items), "seeds": seeds, "version": str(c.version)}


@router.post("/jobs/{job_id}/compare")
async def compare_submit(job_id: str, request: Request, tenant: PageTenant, state: StateDep,
                         compares: ComparesDep, settings: SettingsDep) -> Response:
    job = _owned(state, job_id, tenant)
    if job is None:
        return _not_found(job_id)
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
    values = {k: form.get(k, "") for k in ("prompt", "items", "seeds", "version")}
    raw = {
        "prompt": values["prompt"],
        "items": [w.strip() for w in values["items"].split(",") if w.strip()],
        "seeds": _seeds(values["seeds"]),
        "version": int(values["version"]) if values["version"].strip().isdigit() else None,
    }
    try:
        record = submit(job, CompareCreate.model_validate(raw), state, compares, get_celery(request, settings))
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return _page(job, state, compares, values, error=f"{field_path(first.get('loc', ()))}: {msg}", status=422)
    except DFusionError as exc:  # the JSON API's statuses: 409 while the job runs, 422 naming `version`, ...
        return _page(job, state, compares, values, error=str(exc), status=status_for(exc))
    return RedirectResponse(f"/jobs/{job.job_id}/compare?id={record.id}", status_code=303)


__all__ = ["router"]
