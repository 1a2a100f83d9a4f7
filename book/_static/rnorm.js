// Marks every table box that is wider than the page (html_js_files in _config.yml): rnorm.css then shows a
// "scroll" hint above it and a fading right edge until the reader has scrolled to its end.
(function () {
  "use strict";
  var BOXES = "div.output.text_html, div.pst-scrollable-table-container, .rnorm-scroll";

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
      hint.textContent = "This table is wider than the page: scroll it sideways \u2192";
      box.parentNode.insertBefore(hint, box);
    } else if (!overflows && has) {
      hint.remove();
    }
  }

  function init() {
    var all = boxes();
    all.forEach(function (box) {
      update(box);
      box.addEventListener("scroll", function () { update(box); }, { passive: true });
    });
    window.addEventListener("resize", function () { all.forEach(update); });
    if (window.ResizeObserver) {  // a table that grows later (web fonts, MathJax) is marked then
      var seen = new ResizeObserver(function () { all.forEach(update); });
      all.forEach(function (box) { seen.observe(box); box.querySelectorAll("table").forEach(function (t) { seen.observe(t); }); });
    }
    document.documentElement.dataset.rnormTables = "ready";  // the browser test waits for this
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
