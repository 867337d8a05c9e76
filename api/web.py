"""The web UI: server-rendered pages over the same state, store and tokens as the JSON API.

`/login` takes a token once and keeps it in the HttpOnly `dfusion_token` cookie, which the JSON
API and the object proxy already accept; `/` lists the tenant's jobs; `/jobs/{id}` shows progress
per stage (refreshed by a small inline script polling `/v1/jobs/{id}`), training curves, score
histograms per epoch, every pair as base | reference + mask | target, and the sample gallery.
`/jobs/{id}/pairs.parquet` is the pair dataset (services.export). Nothing is fetched from the
network: the HTML pieces are the `reports` package's (torch-free), styles inline, and the charts
are Vega-Lite specs drawn by the vendored Vega scripts this app serves under `/static/vendor/`.
"""

from __future__ import annotations

import json
import time
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from api.deps import TOKEN_COOKIE, SettingsDep, StateDep, StoreDep, TokensDep, resolve_tenant
from api.routes.jobs import object_url
from api.schemas import JobSummary
from dfusion_core.errors import ConfigError
from reports import charts
from reports import job as report
from reports.html import escape as _e
from reports.html import human_bytes, page
from services.records import CheckpointRecord, PairRecord, SampleRecord, load_all
from services.state.redis import RedisJobStore
from services.state.types import JobNotFound, JobRecord

router = APIRouter(include_in_schema=False)

#: How long the login cookie lives (seconds); the token itself does not expire.
COOKIE_MAX_AGE_S = 30 * 24 * 3600
_bearer = HTTPBearer(auto_error=False)
_cookie = APIKeyCookie(name=TOKEN_COOKIE, auto_error=False)


class LoginRequired(Exception):
    """No valid token on a page request: answered with a redirect to /login."""


def page_tenant(
    request: Request,
    settings: SettingsDep,
    tokens: TokensDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: Annotated[str | None, Depends(_cookie)],
) -> str:
    """The tenant of a page request (cookie or bearer), else LoginRequired."""
    tenant = resolve_tenant(settings, tokens, bearer, cookie)
    if tenant is None:
        raise LoginRequired(request.url.path)
    return tenant


PageTenant = Annotated[str, Depends(page_tenant)]


def install(app: FastAPI) -> None:
    """Include the router and answer LoginRequired with a redirect (called by api.main)."""

    async def to_login(request: Request, exc: Exception) -> Response:
        return RedirectResponse(f"/login?next={quote(str(exc), safe='/')}", status_code=303)

    app.add_exception_handler(LoginRequired, to_login)
    app.include_router(router)
    app.mount(charts.VENDOR_URL, StaticFiles(directory=charts.vendor_dir()), name="vendor")


def _html(title: str, body: str, status: int = 200, head: str = "") -> HTMLResponse:
    nav = '<nav><a href="/">jobs</a> · <form method="post" action="/logout" style="display:inline">' \
          '<button>log out</button></form></nav>'
    return HTMLResponse(page(title, nav + body, head), status_code=status,
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def _safe_next(target: str | None) -> str:
    """Only same-site paths: '/x' yes, '//host' or 'http://host' no (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


# --- login ---------------------------------------------------------------------------------------
def _login_page(next_path: str, error: str = "", status: int = 200) -> HTMLResponse:
    err = f'<p class="status failed" role="alert">{_e(error)}</p>' if error else ""
    body = (f"<h1>dfusion: log in</h1>{err}<form method='post' action='/login'>"
            f"<input type='hidden' name='next' value='{_e(next_path)}'>"
            "<label>API token <input type='password' name='token' id='token' size='48' autofocus required>"
            "</label> <button type='submit' id='login'>log in</button></form>"
            "<p class='muted'>Create one with <code>dfusion token create --tenant NAME</code>.</p>")
    return HTMLResponse(page("dfusion: log in", body), status_code=status)


@router.get("/login", response_class=HTMLResponse)
def login_form(next: str = "/") -> HTMLResponse:  # noqa: A002 - the query parameter's name
    return _login_page(_safe_next(next))


@router.post("/login")
async def login(request: Request, tokens: TokensDep) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    next_path = _safe_next((form.get("next") or ["/"])[0])
    if not token or len(token) > 512 or tokens.tenant_for(token) is None:
        return _login_page(next_path, "unknown token", status=401)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(TOKEN_COOKIE, token, max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(TOKEN_COOKIE, path="/")
    return response


# --- pages ---------------------------------------------------------------------------------------
JOBS_PAGE = 100  # jobs on the jobs page (each row validates its job's spec)


@router.get("/", response_class=HTMLResponse)
def jobs_page(tenant: PageTenant, state: StateDep) -> HTMLResponse:
    rows = []
    for job in state.list_jobs(tenant, limit=JOBS_PAGE):
        s = JobSummary.from_record(job)
        rows.append(
            f'<tr><td><a href="/jobs/{_e(s.id)}">{_e(s.id[:12])}</a></td>'
            f'<td><span class="status {_e(s.status.value)}">{_e(s.status.value)}</span></td>'
            f"<td>{_e(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s.created_at)))}</td>"
            f"<td>{_e(s.spec.model)}</td><td>{len(s.spec.prompts)}</td><td>{s.spec.total_samples}</td>"
            f"<td>{s.policy_version}</td><td class='stored' title='{s.stored_objects} objects'>"
            f"{human_bytes(s.stored_bytes)}</td>"
            f"<td style='text-align:left'>{_e('; '.join(s.spec.prompts)[:80])}</td></tr>")
    table = ("<table id='jobs'><tr><th>job</th><th>status</th><th>created</th><th>model</th><th>prompts</th>"
             "<th>samples</th><th>version</th><th>stored</th><th>prompts</th></tr>" + "".join(rows) + "</table>"
             if rows else "<p class='muted'>No jobs yet: <code>dfusion submit PROMPTS.jsonl</code>.</p>")
    total = state.count_jobs(tenant)
    more = (f"<p class='muted'>The newest {JOBS_PAGE} of {total} jobs; the rest: "
            f"<code>GET /v1/jobs?offset={JOBS_PAGE}</code>.</p>" if total > JOBS_PAGE else "")
    return _html("dfusion: jobs", f"<h1>Jobs of {_e(tenant)}</h1>{table}{more}")


def _owned(state: RedisJobStore, job_id: str, tenant: str) -> JobRecord | None:
    try:
        job = state.get_job(job_id)
    except (ConfigError, JobNotFound):
        return None
    return job if job.tenant == tenant else None


# Polls the JSON API (same origin, cookie auth) and reloads once the job ends or an epoch lands.
_LIVE = """<script>
(function(){const id=%s,stages=%s,epochs=%d;
async function poll(){try{const r=await fetch('/v1/jobs/'+id,{credentials:'same-origin'});
if(!r.ok)return;const j=await r.json();const st=document.getElementById('status');
st.textContent=j.status;st.className='status '+j.status;
for(const s of stages){const bar=document.getElementById('progress-'+s),n=document.getElementById('count-'+s);
const v=j.counts[s];if(bar&&bar.max>1)bar.value=v;if(n)n.textContent=v+(bar&&bar.max>1?' / '+bar.max:'');}
if(['succeeded','failed','cancelled'].includes(j.status)||j.metrics.length!==epochs){location.reload();return;}
}catch(e){}setTimeout(poll,2000);}setTimeout(poll,2000);})();
</script>"""


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, tenant: PageTenant, state: StateDep) -> HTMLResponse:
    job = _owned(state, job_id, tenant)
    if job is None:
        return _html("dfusion: not found", f"<h1>No job {_e(job_id)}</h1>", status=404)
    s = JobSummary.from_record(job)
    metrics = state.get_metrics(job.job_id)
    samples = load_all(SampleRecord, state.list_samples(job.job_id))
    pairs = load_all(PairRecord, state.list_pairs(job.job_id))
    checkpoints = [CheckpointRecord.load(c) for c in state.list_checkpoints(job.job_id)]

    def url(key: str) -> str:
        return object_url(job.job_id, key) or ""

    error = f'<p class="status failed">{_e(s.error)}</p>' if s.error else ""
    ckpts = " · ".join(f'<a href="{_e(url(c.key))}">v{c.version}</a>' for c in checkpoints) or "none yet"
    body = (
        f'<h1>Job {_e(s.id)} <span id="status" class="status {_e(s.status.value)}">{_e(s.status.value)}</span></h1>'
        f"{error}<p>model <b>{_e(s.spec.model)}</b> · {len(s.spec.prompts)} prompts × {s.spec.samples_per_prompt} "
        f"samples × {s.spec.epochs} epochs · pairs: {_e(s.spec.pairs)} · loss: {_e(s.spec.algorithm)} · "
        f"policy version {s.policy_version}</p>"
        f"<h2>Progress</h2>{report.progress_bars(state.get_counts(job.job_id), report.stage_totals(s.spec.expected_counts))}"
        f"<h2>Training</h2>{report.metrics_table(metrics)}{report.curves(metrics)}"
        f"<p>checkpoints: {ckpts} · <a id='export' href='/jobs/{_e(s.id)}/pairs.parquet'>pairs as Parquet</a>"
        f" · <a id='compare' href='/jobs/{_e(s.id)}/compare'>compare the trained policy with its base</a></p>"
        f"<h2>Pairs ({len(pairs)})</h2>{report.pair_rows(pairs, url)}"
        f"<h2>Scores</h2>{report.score_histograms(samples) if samples else ''}"
        f"<h2>Samples ({len(samples)})</h2>{report.gallery(samples, url)}")
    live = "" if s.status.terminal else _LIVE % (json.dumps(s.id), json.dumps(report.STAGES), len(metrics))
    return _html(f"dfusion: job {s.id[:12]}", body + live, head=charts.linked_scripts())


@router.get("/jobs/{job_id}/pairs.parquet")
def pairs_parquet(job_id: str, tenant: PageTenant, state: StateDep, store: StoreDep) -> Response:
    """The job's pairs as one Parquet file (see services.export for the columns)."""
    from services.export import pairs_table_bytes

    job = _owned(state, job_id, tenant)
    if job is None:
        raise JobNotFound(job_id)
    data = pairs_table_bytes(state, store, job)
    return Response(data, media_type="application/vnd.apache.parquet", headers={
        "Content-Disposition": f'attachment; filename="dfusion-{job.job_id}-pairs.parquet"'})


__all__ = ["LoginRequired", "install", "router"]
