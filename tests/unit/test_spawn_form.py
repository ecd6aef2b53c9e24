"""The spawn form as its HTML reads: profile lines, the pool's status, the GPUs' model and
memory, the marks on profiles that would get no GPU now, and what its script follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest

from gpulab.hub.inventory import Gpu, configured
from gpulab.hub.settings import Profile, Settings
from gpulab.spawner import profiles
from gpulab.spawner.profiles import LiveStatus, Pool, render_form

H100 = ("NVIDIA H100 80GB HBM3", 85_520_809_984)  # as NVML reports one
T4 = ("Tesla T4", 16_106_127_360)


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    def all(self, cls: str) -> list[Element]:
        found = []
        for c in self.children:
            if isinstance(c, Element):
                found += [c] if cls in c.classes else []
                found += c.all(cls)
        return found

    def one(self, cls: str) -> Element:
        (found,) = self.all(cls)
        return found


class Tree(HTMLParser):
    """The form's HTML as elements (the script's text kept as text)."""

    VOID = {"input", "br"}

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.root = Element("root", {})
        self.stack = [self.root]
        self.feed(html)
        self.close()
        assert self.stack == [self.root], "the form's tags are not all closed"

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_endtag(self, tag):
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def form(settings=None, free=3, total=3, waiting=0, gpus=(), chosen="", live=None) -> Element:
    pool = Pool(free=free, total=total, waiting=waiting, gpus=gpus)
    return Tree(render_form(settings or Settings(), pool, chosen, live)).root


def words(text: str) -> str:
    return " ".join(text.split())


def lines(page: Element) -> dict[str, str]:
    """Each profile's line, by its radio button's value, as the page reads."""
    return {_radio(row).attrs["value"]: words(row.text) for row in page.all("gpulab-profile")}


def _radio(row: Element) -> Element:
    (radio,) = [c for c in row.children if isinstance(c, Element) and c.tag == "input"]
    return radio


def status(page: Element) -> str:
    return words(page.one("gpulab-gpu-status").text)


def nvml(*kinds: tuple[str, int]) -> list[Gpu]:
    return [
        Gpu(id=f"GPU-{i}", index=i, model=model, memory_bytes=memory)
        for i, (model, memory) in enumerate(kinds)
    ]


def settings_with(*entries: tuple[str, int]) -> Settings:
    return Settings(
        profiles=[
            Profile(slug=f"p{i}", display_name=name, gpus=gpus)
            for i, (name, gpus) in enumerate(entries)
        ]
    )


# -- profile lines ---------------------------------------------------------------------


def test_default_profiles_say_their_gpu_count_once():
    page = form()
    assert lines(page) == {"cpu": "CPU only", "gpu-1": "1 GPU", "gpu-2": "2 GPUs"}


@pytest.mark.parametrize(
    ("name", "gpus", "line"),
    [
        ("Notebook", 0, "Notebook · no GPU"),
        ("A100 box", 1, "A100 box · 1 GPU"),
        ("Big box", 2, "Big box · 2 GPUs"),
        ("Big box", 8, "Big box · 8 GPUs"),
        ("2x A100 GPUs", 2, "2x A100 GPUs"),
        ("One GPU, 80 GB", 1, "One GPU, 80 GB"),
        ("Dual-GPU training", 2, "Dual-GPU training"),
        ("4-GPU node", 4, "4-GPU node"),
        ("No GPU", 0, "No GPU"),
        ("GPU (1)", 1, "GPU (1)"),
        # the name says another number, or GPUs without one: the count follows
        ("4 GPUs", 1, "4 GPUs · 1 GPU"),
        ("H100 GPU", 1, "H100 GPU · 1 GPU"),
        ("GPU box 2.5", 2, "GPU box 2.5 · 2 GPUs"),
        ("Team 2", 1, "Team 2 · 1 GPU"),
    ],
)
def test_a_profile_line_adds_the_gpu_count_only_where_the_name_does_not_say_it(name, gpus, line):
    page = form(settings_with((name, gpus)), free=8, total=8)
    assert lines(page) == {"p0": line}


def test_a_profile_shows_its_description_and_everything_admins_wrote_as_text():
    s = Settings(
        profiles=[
            Profile(
                slug='x"><b>',
                display_name="<script>alert(1)</script>",
                description="Fits <img src=x onerror=alert(2)> & more",
                gpus=1,
            )
        ]
    )
    html = render_form(s, Pool(free=1, total=1))
    assert "<script>alert" not in html and "<img" not in html
    page = Tree(html).root
    row = page.one("gpulab-profile")
    assert _radio(row).attrs["value"] == 'x"><b>'
    assert (
        words(row.text)
        == "<script>alert(1)</script> · 1 GPU Fits <img src=x onerror=alert(2)> & more"
    )


def test_the_chosen_profile_is_checked_and_an_unknown_one_falls_back_to_the_default():
    checked = lambda page: [  # noqa: E731
        _radio(r).attrs["value"] for r in page.all("gpulab-profile") if "checked" in _radio(r).attrs
    ]
    assert checked(form(chosen="gpu-2")) == ["gpu-2"]
    assert checked(form(chosen="no-such-profile")) == ["cpu"]
    assert checked(form()) == ["cpu"]


def test_saved_environments_are_offered_beside_the_base_and_posted_as_chosen():
    assert "environment" not in render_form(Settings(), Pool(free=1, total=1))  # none saved
    choices = [
        profiles.EnvironmentChoice("torch-2", "torch & <my> loaders", 3),
        profiles.EnvironmentChoice("alice/vision", "", 1),
    ]
    page = Tree(
        render_form(
            Settings(),
            Pool(free=1, total=1),
            environments=choices,
            chosen_environment="alice/vision",
        )
    ).root
    (select,) = [
        c
        for c in page.one("gpulab-environment").children
        if isinstance(c, Element) and c.tag == "select"
    ]
    options = [
        (o.attrs["value"], words(o.text), "selected" in o.attrs)
        for o in select.children
        if isinstance(o, Element)
    ]
    assert options == [
        ("", "Base environment", False),
        ("torch-2", "torch-2 — torch & <my> loaders (3 packages)", False),
        ("alice/vision", "alice/vision (1 package)", True),
    ]
    assert profiles.options_from_form({"profile": ["cpu"], "environment": ["torch-2"]}) == {
        "profile": "cpu",
        "environment": "torch-2",
    }
    assert profiles.options_from_form({"profile": ["cpu"], "environment": [""]}) == {
        "profile": "cpu"
    }


# -- the pool --------------------------------------------------------------------------


def test_the_status_line_says_free_of_total_and_the_requests_waiting():
    assert status(form(free=2, total=3)) == "2 of 3 GPUs free"
    assert status(form(free=0, total=1)) == "0 of 1 GPU free"
    assert (
        status(form(free=0, total=4, waiting=1)) == "0 of 4 GPUs free · 1 request waiting for GPUs"
    )
    assert (
        status(form(free=0, total=4, waiting=2)) == "0 of 4 GPUs free · 2 requests waiting for GPUs"
    )
    assert status(form(free=0, total=0)) == "no GPUs on this hub"


def test_profiles_that_would_get_no_gpu_now_are_marked():
    def marked(page):
        return {
            _radio(r).attrs["value"]: words(r.one("gpulab-why").text)
            for r in page.all("gpulab-profile")
            if "gpulab-unavailable" in r.classes
        }

    assert marked(form(free=3, total=3)) == {}
    assert marked(form(free=1, total=3)) == {"gpu-2": "· not enough free now"}
    assert marked(form(free=0, total=3)) == {
        "gpu-1": "· not enough free now",
        "gpu-2": "· not enough free now",
    }
    # a request waiting in the queue comes first: the free GPU is promised to it
    assert marked(form(free=1, total=3, waiting=1)) == {
        "gpu-1": "· not enough free now",
        "gpu-2": "· not enough free now",
    }
    assert marked(form(free=1, total=1)) == {"gpu-2": "· more GPUs than this hub has"}
    assert lines(form(free=0, total=0)) == {
        "cpu": "CPU only",
        "gpu-1": "1 GPU · more GPUs than this hub has",
        "gpu-2": "2 GPUs · more GPUs than this hub has",
    }


def test_the_hubs_gpus_are_shown_by_model_and_memory_where_the_inventory_knows_them():
    page = form(free=4, total=4, gpus=nvml(H100, H100, H100, T4))
    assert (
        words(page.one("gpulab-gpu-models").text)
        == "The hub's GPUs: 3 × NVIDIA H100 80GB HBM3, 79.6 GiB; 1 × Tesla T4, 15 GiB"
    )
    # a cluster's GPUs: the model from the node's label, no memory
    slots = [Gpu(id=f"n1/{i}", index=i, model="NVIDIA-A100-SXM4-80GB", node="n1") for i in (0, 1)]
    page = form(free=2, total=2, gpus=slots)
    assert words(page.one("gpulab-gpu-models").text) == "The hub's GPUs: 2 × NVIDIA-A100-SXM4-80GB"
    mixed = [*nvml(H100), Gpu(id="extra", index=1)]
    page = form(free=2, total=2, gpus=mixed)
    assert (
        words(page.one("gpulab-gpu-models").text)
        == "The hub's GPUs: 1 × NVIDIA H100 80GB HBM3, 79.6 GiB; 1 × model not known"
    )


def test_configured_gpu_ids_show_no_model_nothing_invented():
    page = form(free=3, total=3, gpus=configured(["0", "1", "2"]))
    assert page.all("gpulab-gpu-models") == []
    assert "GiB" not in page.text and "×" not in page.text


@pytest.mark.parametrize(
    ("memory_bytes", "text"),
    [(85_520_809_984, "79.6 GiB"), (16 * 2**30, "16 GiB"), (150_000_000_000, "140 GiB")],
)
def test_memory_is_in_gib_as_nvml_counts_it(memory_bytes, text):
    assert profiles.memory_text(memory_bytes) == text


# -- what the script follows -------------------------------------------------------------


def test_the_live_form_names_the_servers_gpu_status_and_carries_its_script():
    live = LiveStatus(url="/hub/api/gpulab/gpu?user=a%26b&server=x", xsrf='tok"en')
    page = form(free=1, total=3, live=live)
    root = page.one("gpulab-form")
    assert root.attrs["data-gpu-status"] == live.url
    assert root.attrs["data-xsrf"] == 'tok"en'
    assert int(root.attrs["data-wait"]) == profiles.LIVE_WAIT_SECONDS
    (script,) = [c for c in root.children if isinstance(c, Element) and c.tag == "script"]
    assert "visibilitychange" in script.text and "availability not current" in script.text
    # what the script writes where the server wrote before
    assert page.one("gpulab-stale").text == ""
    assert [int(r.attrs["data-gpus"]) for r in page.all("gpulab-profile")] == [0, 1, 2]


def test_without_a_page_to_follow_or_gpus_to_count_the_form_has_no_script():
    live = LiveStatus(url="/hub/api/gpulab/gpu?user=a&server=", xsrf="t")
    for page in (form(free=1, total=3), form(free=0, total=0, live=live)):
        root = page.one("gpulab-form")
        assert "data-gpu-status" not in root.attrs
        assert not [c for c in root.children if isinstance(c, Element) and c.tag == "script"]
