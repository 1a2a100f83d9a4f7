"""The built HTML book as a reader sees it, in a real browser (Playwright driving the system Chromium), at a
laptop's width (1280 px) and a phone's (390 px): nothing overflows the page outside a scroll box, every image
has loaded, every equation is rendered (MathJax is served with the book, so this holds offline), no raw `$$`,
`\\(` or `{glue` is left in the text, and the front page's verdict table starts on the first screen.

Skips, saying why, where the `playwright` package or a Chromium is missing (`apt-get install chromium`; the
executable is taken from ``RNORM_CHROMIUM`` or the PATH: Playwright's own browser download is not needed).
The book is built from the committed chapters like ``tests/test_notebooks.py`` builds it, or taken from
``RNORM_BOOK_HTML`` (an ``_build/html`` folder) when that is set. Screenshots of every page at both widths go
to ``RNORM_SCREENSHOTS`` (default: a temporary folder), which CI keeps as an artifact.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WIDTHS = {"laptop": (1280, 800), "phone": (390, 844)}
FIRST_SCREEN = 800  # px: the whole verdict table (top to bottom) must be within this at 1280 px
PAGES = {  # every page of _toc.yml: the front page, the ledger, the chapters, the pages on how it was done
    "intro": "book/intro.html",
    "ledger": "book/executed/05_claims_ledger.html",
    "ch1": "book/executed/01_distribution_shift.html",
    "ch2": "book/executed/02_stats_swap.html",
    "ch3": "book/executed/03_robustnorm.html",
    "ch4": "book/executed/04_easy_batchnorm.html",
    "methods": "book/methods.html",
    "reproducing": "book/reproducing.html",
    "limitations": "book/limitations.html",
    "performance": "book/performance.html",
}
RAW = ("$$", "\\(", "\\)", "\\[", "{glue")



def test_training_cost_page_is_current():
    """The Reproducing page's training-cost table is what book/training_cost.py computes from models/ now."""
    sys.path.insert(0, str(REPO / "book"))
    try:
        import training_cost
    finally:
        sys.path.pop(0)
    assert (REPO / "book" / "training-cost.md").read_text() == training_cost.page(), \
        "book/training-cost.md is stale: run `python book/training_cost.py` (a run was published since)"


def _chromium() -> str | None:
    for name in (os.environ.get("RNORM_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the browser test needs the playwright package (pip install playwright)")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium, or set RNORM_CHROMIUM): "
                    "the built book was not checked in a browser")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        except Exception as e:  # a Chromium that cannot start here (no display libraries, a sandbox refusing)
            pytest.skip(f"Chromium at {exe} does not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    """The HTML book: ``RNORM_BOOK_HTML`` if set, else built here from the committed chapters and notebooks."""
    if os.environ.get("RNORM_BOOK_HTML"):
        return Path(os.environ["RNORM_BOOK_HTML"])
    src = tmp_path_factory.mktemp("book-src")
    hidden = shutil.ignore_patterns(".*")  # files of a notebook being executed right now
    shutil.copytree(REPO / "book", src / "book", ignore=hidden)
    shutil.copytree(REPO / "benchmarks" / "results", src / "benchmarks" / "results")  # the Performance page includes it
    for f in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / f, src / f)
    exe = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(exe) if exe.exists() else "jupyter-book", "build", str(src)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return src / "_build" / "html"


@pytest.fixture(scope="module")
def shots() -> Path:
    out = Path(os.environ.get("RNORM_SCREENSHOTS") or tempfile.mkdtemp(prefix="rnorm-screenshots-"))
    out.mkdir(parents=True, exist_ok=True)
    return out


_SETTLE = """async () => {
  for (const img of document.images) img.loading = 'eager';
  await Promise.race([
    Promise.all([...document.images].map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; }))),
    new Promise(r => setTimeout(r, 15000))]);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  await document.fonts.ready;
  window.dispatchEvent(new Event('resize'));  // rnorm.js marks the table boxes after the fonts changed widths
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
}"""

# Elements that stick out of the viewport (left or right), except inside an element that scrolls or clips
# horizontally; only the outermost offender of a subtree is named.
_OVERFLOW = """() => {
  const W = document.documentElement.clientWidth;
  const clipped = el => { for (let p = el.parentElement; p && p !== document.documentElement; p = p.parentElement) {
      if (['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(p).overflowX)) return true; }
    return false; };
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.classList.length ? '.' + [...el.classList].slice(0, 3).join('.') : '');
  const bad = [];
  for (const el of document.body.querySelectorAll('*')) {
    const cs = getComputedStyle(el);
    if (cs.display === 'none' || cs.visibility === 'hidden' || el.closest('dialog:not([open])')) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || (r.right <= W + 1 && r.left >= -1)) continue;
    if (clipped(el) || bad.some(b => b.contains(el))) continue;
    bad.push(el);
  }
  return {page: document.documentElement.scrollWidth - W,
          elements: bad.map(el => { const r = el.getBoundingClientRect();
            return `${name(el)} [${Math.round(r.left)}, ${Math.round(r.right)}] px: ` +
                   JSON.stringify((el.innerText || el.alt || '').trim().slice(0, 60)); })};
}"""

_IMAGES = """() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
  .map(i => i.getAttribute('src'))"""

# Visible text outside code and rendered math; and equations MathJax left unrendered.
_TEXT = """() => {
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight';
  const walk = document.createTreeWalker(document.querySelector('main') || document.body, NodeFilter.SHOW_TEXT);
  const parts = [];
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest(skip) || !el.getClientRects().length) continue;
    parts.push(n.textContent);
  }
  const unrendered = [...document.querySelectorAll('.math')].filter(m => !m.querySelector('mjx-container'))
    .map(m => m.textContent.trim().slice(0, 60));
  return {text: parts.join(' '), unrendered};
}"""

# Every table wider than its box: the box that scrolls (or clips) it, and whether it shows the cue that
# book/_static/rnorm.js adds (a hint above it and a fading edge, class rnorm-overflows).
_WIDE_TABLES = """() => [...document.querySelectorAll('main table')].flatMap(t => {
  let box = t.parentElement;
  while (box && !['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(box).overflowX)) box = box.parentElement;
  if (!box || box.scrollWidth <= box.clientWidth + 1) return [];
  const head = (t.querySelector('thead') || t).innerText.replace(/\\s+/g, ' ').trim().slice(0, 50);
  return [{head, shown: Math.round(100 * box.clientWidth / box.scrollWidth),
           cue: box.classList.contains('rnorm-overflows') && !!box.previousElementSibling &&
                box.previousElementSibling.classList.contains('rnorm-scroll-hint'),
           scrolls: ['auto', 'scroll'].includes(getComputedStyle(box).overflowX)}];
})"""


def _open(browser, html: Path, page: str, width: str):
    w, h = WIDTHS[width]
    ctx = browser.new_context(viewport={"width": w, "height": h}, device_scale_factor=1)
    tab = ctx.new_page()
    tab.goto((html / PAGES[page]).as_uri(), wait_until="load")
    tab.evaluate(_SETTLE)
    return ctx, tab


def test_methods_states_the_floor_constants_of_the_code():
    """Methods explains the floors and C3's speed target with the constants the verdicts use; this fails when
    one changes in the code and not on the page."""
    from rnorm.experiments import protocol, verdicts
    text = " ".join((REPO / "book" / "methods.md").read_text().split())
    ref = protocol.REFERENCES[("cifar10_jpeg", "resnet20")]
    for stated in (f"`protocol.FLOOR_FRACTION` ({protocol.FLOOR_FRACTION:.2f})",
                   f"`claims.SPEED_TARGET` ({verdicts.SPEED_TARGET:.2f})",
                   f"`claims.SPEED_MARGIN` ({verdicts.SPEED_MARGIN:g})", f"at most {-verdicts.SPEED_MARGIN:g} epochs more",
                   f"records {100 * ref.accuracy:.2f} %",
                   f"{verdicts.SPEED_TARGET:.2f} × {100 * ref.accuracy:.2f} %",
                   f"epochs to {100 * verdicts.SPEED_TARGET * ref.accuracy:.1f} % test accuracy"):
        assert stated in text, f"book/methods.md does not say {stated!r}"


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page", PAGES)
def test_page_reads_in_a_browser(browser, html, shots, page, width):
    ctx, tab = _open(browser, html, page, width)
    try:
        tab.screenshot(path=str(shots / f"{page}-{WIDTHS[width][0]}px.png"), full_page=True)
        problems = []
        over = tab.evaluate(_OVERFLOW)
        if over["page"] > 1:
            problems.append(f"the page scrolls sideways by {over['page']} px")
        problems += [f"sticks out of the {WIDTHS[width][0]} px viewport: {e}" for e in over["elements"]]
        problems += [f"image not loaded: {src}" for src in tab.evaluate(_IMAGES)]
        text = tab.evaluate(_TEXT)
        problems += [f"equation not rendered: {m!r}" for m in text["unrendered"]]
        for raw in RAW:
            if raw in text["text"]:
                i = text["text"].index(raw)
                problems.append(f"raw {raw!r} in the text: ...{text['text'][max(0, i - 40):i + 40]!r}...")
        wide = tab.evaluate(_WIDE_TABLES)
        for t in wide:
            print(f"{page} at {WIDTHS[width][0]} px: table {t['head']!r} shows {t['shown']} % of its width")
            if not t["scrolls"]:
                problems.append(f"table {t['head']!r} is clipped (shows {t['shown']} % of its width), not scrolled")
            elif not t["cue"]:
                problems.append(f"table {t['head']!r} scrolls sideways without a visible cue "
                                f"(shows {t['shown']} % of its width)")
        assert not problems, f"{page} at {WIDTHS[width][0]} px:\n" + "\n".join(problems)
    finally:
        ctx.close()


@pytest.mark.slow
def test_verdict_table_is_on_the_first_screen(browser, html):
    ctx, tab = _open(browser, html, "intro", "laptop")
    try:
        top = tab.evaluate("""() => { for (const t of document.querySelectorAll('main table')) {
            const head = [...t.querySelectorAll('th')].map(th => th.innerText.trim().toLowerCase());
            if (head.includes('verdict')) { const r = t.getBoundingClientRect();
              return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY,
                      badges: t.querySelectorAll('td.rnorm-verdict').length,
                      rows: t.querySelectorAll('tbody tr').length}; } }
          return null; }""")
        assert top is not None, "the front page has no table with a 'verdict' column"
        assert top["bottom"] <= FIRST_SCREEN, (f"the verdict table spans {top['top']:.0f}-{top['bottom']:.0f} px, "
                                               f"beyond the first screen ({FIRST_SCREEN} px) at 1280 px")
        assert top["badges"] == top["rows"], f"{top['badges']} of {top['rows']} verdicts are marked as badges"
    finally:
        ctx.close()
