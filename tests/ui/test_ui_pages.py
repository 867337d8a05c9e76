"""The web UI over HTTP on the local stack: login cookie, redirects, tenant isolation, page content."""

from __future__ import annotations

import httpx
import pytest

from reports.html import human_bytes

pytestmark = pytest.mark.integration


def _browser(stack) -> httpx.Client:
    return httpx.Client(base_url=stack.api, timeout=30, follow_redirects=False)


def test_pages_redirect_to_login_without_a_token(stack, tiny_job):
    with _browser(stack) as c:
        r = c.get(f"/jobs/{tiny_job.id}")
        assert r.status_code == 303 and r.headers["location"] == f"/login?next=/jobs/{tiny_job.id}"
        assert c.get("/").headers["location"] == "/login?next=/"
        assert "<form" in c.get("/login").text


def test_login_sets_an_httponly_cookie_that_the_api_accepts(stack, tiny_job):
    with _browser(stack) as c:
        bad = c.post("/login", data={"token": "nope", "next": "/"})
        assert bad.status_code == 401 and "unknown token" in bad.text
        r = c.post("/login", data={"token": stack.token, "next": f"/jobs/{tiny_job.id}"})
        assert r.status_code == 303 and r.headers["location"] == f"/jobs/{tiny_job.id}"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("dfusion_token=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert tiny_job.id in c.get("/").text
        assert c.get(f"/v1/jobs/{tiny_job.id}").json()["status"] == "succeeded"  # same cookie, JSON API
        assert c.post("/logout").headers["location"] == "/login"


def test_jobs_page_shows_what_each_job_stores(stack, tiny_job):
    with _browser(stack) as c:
        c.cookies.set("dfusion_token", stack.token)
        job = c.get(f"/v1/jobs/{tiny_job.id}").json()
        html = c.get("/").text
    assert job["stored_bytes"] > 0 and job["stored_objects"] > 0
    row = html[html.index(f'href="/jobs/{tiny_job.id}"'):].split("</tr>", 1)[0]
    assert f"title='{job['stored_objects']} objects'>{human_bytes(job['stored_bytes'])}</td>" in row


def test_login_never_redirects_off_site(stack):
    with _browser(stack) as c:
        for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            r = c.post("/login", data={"token": stack.token, "next": target})
            assert r.headers["location"] == "/", target


def test_job_page_shows_progress_pairs_histograms_and_curves(stack, tiny_job):
    with _browser(stack) as c:
        c.cookies.set("dfusion_token", stack.token)
        html = c.get(f"/jobs/{tiny_job.id}").text
        for pair in tiny_job.pairs:
            assert pair["id"] in html
            for field in ("base_image_url", "reference_image_url", "target_image_url", "mask_url"):
                assert pair[field] in html
            assert c.get(pair["mask_url"]).headers["content-type"] == "image/png"
            # the target's own score beside the reference's and the base's, and whether it trained
            assert pair["target_score"] is not None and pair["trained"] == (pair["target_score"] > pair["base_score"])
            assert f'<span class="target-score">{pair["target_score"]:.4f}</span>' in html
        assert html.count('class="pair"') == len(tiny_job.pairs)
        assert html.count("<br>trained</td>") == sum(p["trained"] for p in tiny_job.pairs)
        assert 'id="progress-samples"' in html and f'value="{len(tiny_job.samples)}"' in html
        assert "sample scores, epoch 0" in html
        for curve in ("DPO loss", "preference margin", "held-out alignment"):
            assert f"{curve} per policy version" in html
        # the charts: Vega-Lite specs with their series, drawn by the scripts the API serves itself
        for chart in ("chart-heldout", "chart-fusion-gain", "chart-loss", "chart-margin", "chart-scores-0"):
            assert f'data-chart="{chart}"' in html
        assert '"series":"untrained (adapters off)"' in html and '"series":"trained"' in html
        for script in ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js"):
            assert f'<script src="/static/vendor/{script}">' in html
            served = c.get(f"/static/vendor/{script}")
            assert served.status_code == 200 and "javascript" in served.headers["content-type"]
        assert "setTimeout(poll" not in html  # a finished job needs no polling
        assert "http://" not in html.replace(stack.api, "") and "https://" not in html  # nothing remote


def test_other_tenants_see_neither_the_job_nor_its_dataset(stack, tiny_job):
    other = stack.tokens().create("mallory")
    with _browser(stack) as c:
        c.cookies.set("dfusion_token", other)
        assert c.get(f"/jobs/{tiny_job.id}").status_code == 404
        assert tiny_job.id not in c.get("/").text
        assert c.get(f"/jobs/{tiny_job.id}/pairs.parquet").status_code == 404


def test_a_running_job_page_polls_the_api(stack):
    from devstack.harness import TINY_JOB

    with stack.client() as api:
        job_id = api.post("/v1/jobs", json={**TINY_JOB, "samples_per_prompt": 8}).json()["id"]
        try:
            with _browser(stack) as c:
                c.cookies.set("dfusion_token", stack.token)
                html = c.get(f"/jobs/{job_id}").text
        finally:
            api.delete(f"/v1/jobs/{job_id}")
    assert "<script>" in html and "'/v1/jobs/'+id" in html and "setTimeout(poll,2000)" in html
