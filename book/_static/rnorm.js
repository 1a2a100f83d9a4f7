// Marks every table box that is wider than the page (html_js_files in _config.yml): rnorm.css then shows a
// "scroll" hint above it and a fading right edge until the reader has scrolled to its end. On a phone, a figure
// of several panels (rnorm.plots draws one panel at most WIDE_PX pixels wide, so a wider image has several)
// keeps a readable size, PHONE_SCALE of its own pixels, inside a box of its own that scrolls sideways with the
// same cue, instead of shrinking to the screen's width. In a table with a "verdict" column (the front page's),
// each verdict cell is marked with its verdict, which rnorm.css sets as a coloured badge.
(function () {
  "use strict";
  var BOXES = "div.output.text_html, div.pst-scrollable-table-container, .rnorm-scroll";
  var PHONE = window.matchMedia ? window.matchMedia("(max-width: 600px)") : null;
  var WIDE_PX = 700;       // the natural width above which a figure has several panels side by side
  var PHONE_SCALE = 0.75;  // of its natural width: the smallest at which its text stays readable

  var watched = [];  // every scroll box, tables' and figures': one scroll listener each, one resize listener for all

  function watch(box) {
    if (watched.indexOf(box) >= 0) return;
    watched.push(box);
    box.addEventListener("scroll", function () { update(box); }, { passive: true });
  }

  function phoneWidth(img) {
    return PHONE && PHONE.matches ? Math.round(PHONE_SCALE * img.naturalWidth) + "px" : "";
  }

  function wideFigures() {
    var found = [];
    document.querySelectorAll("div.cell_output img, figure img").forEach(function (img) {
      var fit = function () {
        if (!img.naturalWidth || img.naturalWidth <= WIDE_PX) return;
        var box = img.closest(".rnorm-scroll");
        if (!box) {
          box = document.createElement("div");
          box.className = "rnorm-scroll rnorm-figure-box";
          img.parentNode.insertBefore(box, img);
          box.appendChild(img);
        }
        watch(box);
        img.classList.add("rnorm-wide-figure");
        img.style.minWidth = phoneWidth(img);
        update(box);
      };
      if (img.complete) fit(); else img.addEventListener("load", fit);
      found.push(img);
    });
    if (PHONE && PHONE.addEventListener) {
      PHONE.addEventListener("change", function () {
        found.forEach(function (img) {
          if (!img.classList.contains("rnorm-wide-figure")) return;
          img.style.minWidth = phoneWidth(img);
          update(img.closest(".rnorm-scroll"));
        });
      });
    }
  }

  function boxes() {
    var found = [];
    document.querySelectorAll("table").forEach(function (table) {
      var box = table.closest(BOXES);
      if (!box) {  // a table no container holds: give it one
        box = document.createElement("div");
        box.className = "rnorm-scroll";
        table.parentNode.insertBefore(box, table);
        box.appendChild(table);
      }
      if (found.indexOf(box) < 0) found.push(box);
    });
    return found;
  }

  function update(box) {
    var overflows = box.scrollWidth > box.clientWidth + 1;
    box.classList.toggle("rnorm-overflows", overflows);
    box.classList.toggle("rnorm-at-end", box.scrollLeft + box.clientWidth >= box.scrollWidth - 1);
    var hint = box.previousElementSibling;
    var has = hint && hint.classList.contains("rnorm-scroll-hint");
    if (overflows && !has) {
      hint = document.createElement("p");
      hint.className = "rnorm-scroll-hint";
      hint.textContent = (box.querySelector("table") ? "This table" : "This figure") +
        " is wider than the page: scroll it sideways \u2192";
      box.parentNode.insertBefore(hint, box);
    } else if (!overflows && has) {
      hint.remove();
    }
  }

  var VERDICTS = ["reproduced", "partly", "not reproduced", "inconclusive", "not run"];

  function verdictBadges() {
    document.querySelectorAll("table").forEach(function (table) {
      var head = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
        return th.textContent.trim().toLowerCase();
      });
      var col = head.indexOf("verdict");
      if (col < 0) return;
      table.querySelectorAll("tbody tr").forEach(function (tr) {
        var cell = tr.children[col];
        var said = cell ? cell.textContent.trim().toLowerCase() : "";
        if (VERDICTS.indexOf(said) < 0) return;
        cell.classList.add("rnorm-verdict", "rnorm-verdict-" + said.replace(/ /g, "-"));
      });
    });
  }

  function init() {
    verdictBadges();
    wideFigures();
    var all = boxes();
    all.forEach(function (box) { watch(box); update(box); });
    window.addEventListener("resize", function () { watched.forEach(update); });
    if (window.ResizeObserver) {  // a table that grows later (web fonts, MathJax) is marked then
      var seen = new ResizeObserver(function () { all.forEach(update); });
      all.forEach(function (box) { seen.observe(box); box.querySelectorAll("table").forEach(function (t) { seen.observe(t); }); });
    }
    document.documentElement.dataset.rnormTables = "ready";  // the browser test waits for this
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
