"""The compare page over HTTP on the local stack: the form, its errors naming the field, the redirect
to the compare's result, and tenant isolation (the browser test drives it in Chromium)."""

from __future__ import annotations

import httpx
import pytest

from devstack.procs import wait_for

pytestmark = pytest.mark.integration


def _browser(stack, token: str | None = None) -> httpx.Client:
    c = httpx.Client(base_url=stack.api, timeout=30, follow_redirects=False)
    c.cookies.set("dfusion_token", token or stack.token)
    return c


def test_the_job_page_links_to_a_prefilled_compare_form(stack, tiny_job):
    with _browser(stack) as c:
        assert f"href='/jobs/{tiny_job.id}/compare'" in c.get(f"/jobs/{tiny_job.id}").text
        html = c.get(f"/jobs/{tiny_job.id}/compare").text
        assert "id='compare-form'" in html and "value='a cat eating a sandwich'" in html
        assert "value='cat, sandwich'" in html and "<option value='2' selected>v2</option>" in html


@pytest.mark.parametrize(("form", "status", "error"), [
    ({"prompt": "", "seeds": "2"}, 422, "prompt: String should have at least 1 character"),
    ({"prompt": "a cat", "seeds": "9"}, 422, "seeds: give 1 to 8 seeds, got 9"),
    ({"prompt": "a cat", "seeds": "2", "version": "7"}, 422, "version: unknown version 7"),
    ({"prompt": "a cat", "seeds": "2", "items": "dog"}, 422, "items: item &#x27;dog&#x27; is not a word"),
], ids=["empty-prompt", "too-many-seeds", "unknown-version", "item-not-in-prompt"])
def test_a_bad_form_is_shown_again_with_the_field_named(stack, tiny_job, form, status, error):
    with _browser(stack) as c:
        r = c.post(f"/jobs/{tiny_job.id}/compare", data=form)
    assert r.status_code == status and 'id="compare-error"' in r.text and error in r.text, r.text[-800:]


def test_a_submitted_form_redirects_to_its_result(stack, tiny_job):
    with _browser(stack) as c:
        r = c.post(f"/jobs/{tiny_job.id}/compare", data={"prompt": "a cat eating a sandwich", "seeds": "1",
                                                         "items": "", "version": "1"})
        assert r.status_code == 303 and r.headers["location"].startswith(f"/jobs/{tiny_job.id}/compare?id=")
        page = r.headers["location"]
        html = wait_for(lambda: "id='compare-results'" in (t := c.get(page).text) and t, 300, "the compare result")
        assert "base (v0) against v1" in html and "class=\"base\"" in html and "class=\"trained\"" in html
        assert c.get(page.replace(page.rsplit("=", 1)[1], "f" * 32)).status_code == 404


def test_other_tenants_see_no_compare_page(stack, tiny_job):
    other = stack.tokens().create("mallory")
    with _browser(stack, other) as c:
        assert c.get(f"/jobs/{tiny_job.id}/compare").status_code == 404
        assert c.post(f"/jobs/{tiny_job.id}/compare", data={"prompt": "a cat", "seeds": "1"}).status_code == 404
