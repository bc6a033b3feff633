# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role's HTML report, rendered by headless Chromium.

Runs the role hypervisor.migration.postcopy with ansible-playbook over five
inventory hosts that are all this machine (local connection), then opens the
HTML report it wrote in Debian's ``chromium`` and checks the rendered matrix
(``--dump-dom``) against the JSON report beside it. The screenshot is kept as a
test artifact in tests/output/report/ (git-ignored), with the page itself.

The hosts: rack1 = hv-a, hv-b and hv-blocked, whose Python runs under a
seccomp filter denying userfaultfd (molecule/shared/python-userfaultfd-blocked.sh);
rack2 = hv-c, which also runs the canary (a real post-copy migration), and
hv-d; hv-page judges a 64 KiB target page size, larger than this host's.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
OUTPUT = os.path.join(REPO, "tests", "output", "report")
BLOCKED_PYTHON = os.path.join(REPO, "molecule", "shared", "python-userfaultfd-blocked.sh")
WINDOW = (1400, 900)

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

INVENTORY = """\
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
    postcopy_consumers: [local_facts, nova]
    postcopy_fact_path: "{out}/{{{{ inventory_hostname }}}}/facts.d"
    postcopy_nova_conf_dir: "{out}/{{{{ inventory_hostname }}}}/nova.conf.d"
    postcopy_nova_config_files: []
    postcopy_nova_config_dirs: ["{{{{ postcopy_nova_conf_dir }}}}"]
    postcopy_report: "{out}/report/postcopy.html"
  children:
    rack1:
      vars:
        postcopy_peer_group: rack1
      hosts:
        hv-a:
        hv-b:
        hv-blocked:
          ansible_python_interpreter: {blocked}
    rack2:
      vars:
        postcopy_peer_group: rack2
      hosts:
        hv-c:
          postcopy_run_canary: true
          postcopy_canary_memory_mb: 64
        hv-d:
    alone:
      hosts:
        hv-page:
          postcopy_target_page_size: 65536
"""

PLAYBOOK = """\
- name: Post-copy readiness of the test fleet
  hosts: all
  gather_facts: false
  tasks:
    - name: Apply the postcopy role
      ansible.builtin.include_role:
        name: hypervisor.migration.postcopy
"""


def collections_path():
    """Where Ansible finds hypervisor.migration: the checkout's own ansible_collections, or dev.sh's link."""
    parts = REPO.split(os.sep)
    if len(parts) > 3 and parts[-3] == "ansible_collections":
        return os.sep.join(parts[:-3])
    return os.path.join(REPO, ".build", "collections")


def ansible_playbook():
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    return beside if os.access(beside, os.X_OK) else shutil.which("ansible-playbook")


def chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Dom(HTMLParser):
    """The parts of the rendered report the tests look at: elements with data-* attributes, and their text."""

    BREAKS = ("br", "div", "p", "li", "td", "th", "tr")

    def __init__(self):
        HTMLParser.__init__(self)
        self.elements = []  # (tag, attrs, text parts), in document order
        self._open = []
        self.urls = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href"):
            if attrs.get(name):
                self.urls.append(attrs[name])
        if tag in self.BREAKS:
            # rendered on a line or in a box of its own: a word boundary in the text around it
            for element in self._open:
                element[2].append(" ")
        element = (tag, attrs, [])
        self.elements.append(element)
        if tag not in ("br", "meta", "link", "img", "input", "hr"):
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open:
            element = self._open.pop()
            if element[0] == tag:
                break

    def handle_data(self, data):
        for element in self._open:
            element[2].append(data)

    def find(self, tag=None, **attrs):
        wanted = dict((k.replace("_", "-"), v) for k, v in attrs.items())
        return [
            (t, a, " ".join("".join(text).split()))
            for t, a, text in self.elements
            if (tag is None or t == tag) and all(a.get(k) == v for k, v in wanted.items())
        ]

    def one(self, tag=None, **attrs):
        found = self.find(tag, **attrs)
        assert len(found) == 1, "expected one <%s %s>, found %d" % (tag, attrs, len(found))
        return found[0]


def row_cells(dom, host):
    """{data-check: (attrs, text)} of the matrix row of host."""
    cells = {}
    inside = False
    for tag, attrs, text in dom.elements:
        if tag == "tr":
            inside = attrs.get("data-host") == host and not cells
            if not inside and cells:
                break
            continue
        if inside and tag == "td" and "data-check" in attrs:
            cells[attrs["data-check"]] = (attrs, " ".join("".join(text).split()))
    return cells


def png_size(path):
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "%s is not a PNG" % path
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def report():
    """Run the role over the test fleet; the paths of the HTML and JSON reports it wrote."""
    playbook = ansible_playbook()
    if not playbook:
        pytest.skip("ansible-playbook not found")
    if not os.access(BLOCKED_PYTHON, os.X_OK):
        pytest.skip("%s is missing" % BLOCKED_PYTHON)
    work = tempfile.mkdtemp(prefix="postcopy-report.")
    try:
        out = os.path.join(work, "out")
        with open(os.path.join(work, "inventory.yml"), "w") as f:
            f.write(INVENTORY.format(out=out, blocked=BLOCKED_PYTHON))
        with open(os.path.join(work, "playbook.yml"), "w") as f:
            f.write(PLAYBOOK)
        env = dict(os.environ)
        env["ANSIBLE_COLLECTIONS_PATH"] = collections_path()
        env["ANSIBLE_LOCAL_TEMP"] = os.path.join(work, "ansible-tmp")
        env["ANSIBLE_NOCOLOR"] = "1"
        env.pop("ANSIBLE_CONFIG", None)
        proc = subprocess.run(
            [playbook, "-i", os.path.join(work, "inventory.yml"), os.path.join(work, "playbook.yml")],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=False,
        )
        output = proc.stdout.decode("utf-8", "replace")
        assert proc.returncode == 0, output[-6000:]
        html = os.path.join(out, "report", "postcopy.html")
        data = os.path.join(out, "report", "postcopy.json")
        os.makedirs(OUTPUT, exist_ok=True)
        shutil.copy(html, os.path.join(OUTPUT, "postcopy.html"))
        shutil.copy(data, os.path.join(OUTPUT, "postcopy.json"))
        yield {"html": html, "json": data, "work": work}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_chromium(args, work):
    browser = chromium()
    if not browser:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    profile = tempfile.mkdtemp(prefix="chromium.", dir=work)
    try:
        proc = subprocess.run(
            [browser] + CHROMIUM_FLAGS + ["--user-data-dir=%s" % profile] + args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=180,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-3000:]
    return proc.stdout.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def dom(report):
    """The report as Chromium rendered it."""
    text = run_chromium(["--dump-dom", "file://" + report["html"]], report["work"])
    with open(os.path.join(OUTPUT, "postcopy.dom.html"), "w") as f:
        f.write(text)
    parser = Dom()
    parser.feed(text)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def data(report):
    with open(report["json"]) as f:
        return json.load(f)


def test_json_report_has_every_host_and_group(data):
    assert [row["host"] for row in data["hosts"]] == ["hv-a", "hv-b", "hv-blocked", "hv-c", "hv-d", "hv-page"]
    assert data["summary"] == {"hosts": 6, "supported": 4, "enabled": 2, "no_verdict": 0}
    assert data["features"] == ["userfaultfd", "target_page_size"]
    assert data["peer_groups"]["rack1"]["ok"] is False
    assert [h["host"] for h in data["peer_groups"]["rack1"]["held_back_by"]] == ["hv-blocked"]
    assert data["peer_groups"]["rack2"] == {"members": ["hv-c", "hv-d"], "ok": True, "held_back_by": []}


def test_matrix_rows_say_enabled_or_disabled(dom, data):
    for row in data["hosts"]:
        attrs = dom.one("tr", data_host=row["host"])[1]
        assert attrs["data-enabled"] == ("true" if row["enabled"] else "false")
        cells = row_cells(dom, row["host"])
        assert cells["enabled"][1] == ("ENABLED" if row["enabled"] else "DISABLED")
        assert cells["supported"][1] == ("supported" if row["supported"] else "not supported")
    assert [found[1]["data-feature"] for found in dom.find("th", **{"class": "feature"})] == data["features"]


def test_matrix_names_each_missing_feature_cause_and_remedy(dom):
    blocked = row_cells(dom, "hv-blocked")
    assert blocked["userfaultfd"][0]["data-missing"] == "true"
    assert blocked["target_page_size"][0]["data-missing"] == "false"
    assert "seccomp" in blocked["cause"][1]
    assert "Allow the userfaultfd syscall" in blocked["cause"][1]
    page = row_cells(dom, "hv-page")
    assert page["target_page_size"][0]["data-missing"] == "true"
    assert page["userfaultfd"][0]["data-missing"] == "false"
    assert page["cause"][1].startswith("page_size Use a target page size no larger than 4096")
    for host in ("hv-a", "hv-b", "hv-c", "hv-d"):
        cells = row_cells(dom, host)
        assert cells["userfaultfd"][1] == "\u2713"
        assert cells["page_size"][1] == "4 KiB"  # 4&nbsp;KiB
        assert cells["qemu"][1]


def test_matrix_says_who_holds_the_peer_group_back(dom):
    for host in ("hv-a", "hv-b"):
        cells = row_cells(dom, host)
        assert cells["peer_group"][0]["data-held-back-by"] == "hv-blocked"
        assert cells["peer_group"][1] == "rack1 held back by hv-blocked"
    assert row_cells(dom, "hv-blocked")["peer_group"][1] == "rack1 holds the group back"
    assert row_cells(dom, "hv-c")["peer_group"][1] == "rack2"
    tag, attrs, text = dom.one("tr", data_group="rack1")
    assert attrs["data-ok"] == "false"
    assert "hv-blocked: cannot do post-copy: missing userfaultfd (seccomp" in text
    assert dom.one("tr", data_group="rack2")[1]["data-ok"] == "true"


def test_matrix_shows_the_canary_time(dom, data):
    canary = [row for row in data["hosts"] if row["host"] == "hv-c"][0]["canary"]
    assert canary["ran"] is True and canary["ok"] is True
    cell = row_cells(dom, "hv-c")["canary"][1]
    assert cell.startswith("ok, ")
    assert row_cells(dom, "hv-d")["canary"][1] == "not run"


def test_summary_and_self_contained(dom):
    counts = dict((attrs["data-count"], text) for tag, attrs, text in dom.find("li") if "data-count" in attrs)
    assert counts["hosts"] == "6 hosts"
    assert counts["enabled"] == "2 post-copy enabled"
    assert counts["disabled"] == "4 disabled"
    assert counts["unsupported"] == "2 cannot do post-copy"
    assert counts["held-back"] == "2 held back by a peer"
    assert not [url for url in dom.urls if "://" in url], dom.urls
    assert not dom.find("script")


def test_screenshot(report):
    shot = os.path.join(OUTPUT, "postcopy-report.png")
    if os.path.exists(shot):
        os.unlink(shot)
    run_chromium(
        ["--screenshot=%s" % shot, "--window-size=%d,%d" % WINDOW, "file://" + report["html"]],
        report["work"],
    )
    assert png_size(shot) == WINDOW
    assert os.path.getsize(shot) > 20000  # a rendered table, not a blank page
