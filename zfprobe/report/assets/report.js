// zfprobe report: channel filter and pagination for layer pages (plain JS, works from file://).
(function () {
  var grid = document.getElementById("channels");
  if (!grid) return;
  var items = Array.prototype.slice.call(grid.querySelectorAll("figure.ch"));
  var box = document.getElementById("filter");
  var info = document.getElementById("pageinfo");
  var prev = document.getElementById("prev");
  var next = document.getElementById("next");
  var perPage = parseInt(grid.getAttribute("data-per-page"), 10) || 64;
  var page = 0;

  function matches(item, query) {
    query = query.trim().toLowerCase();
    if (!query) return true;
    var status = item.getAttribute("data-status") || "";
    if (query === "dead" || query === "weak") return status === query;
    if (query === "alive") return status !== "dead";
    var parts = query.split(",");
    var c = parseInt(item.getAttribute("data-channel"), 10);
    for (var i = 0; i < parts.length; i++) {
      var p = parts[i].trim();
      if (!p) continue;
      var range = p.split("-");
      if (range.length === 2 && range[0] !== "" && range[1] !== "") {
        if (c >= parseInt(range[0], 10) && c <= parseInt(range[1], 10)) return true;
      } else if (String(c) === p) {
        return true;
      }
    }
    return false;
  }

  function render() {
    var query = box ? box.value : "";
    var shown = items.filter(function (it) { return matches(it, query); });
    var pages = Math.max(1, Math.ceil(shown.length / perPage));
    if (page >= pages) page = pages - 1;
    items.forEach(function (it) { it.hidden = true; });
    shown.slice(page * perPage, (page + 1) * perPage).forEach(function (it) { it.hidden = false; });
    if (info) info.textContent = shown.length + " channel(s) - page " + (page + 1) + " of " + pages;
    if (prev) prev.disabled = page === 0;
    if (next) next.disabled = page >= pages - 1;
    grid.setAttribute("data-shown", String(shown.length));
  }

  if (box) box.addEventListener("input", function () { page = 0; render(); });
  if (prev) prev.addEventListener("click", function () { page -= 1; render(); });
  if (next) next.addEventListener("click", function () { page += 1; render(); });
  document.addEventListener("keydown", function (e) {
    if (e.target === box) return;
    if (e.key === "ArrowRight" && next && !next.disabled) { page += 1; render(); }
    if (e.key === "ArrowLeft" && prev && !prev.disabled) { page -= 1; render(); }
  });
  render();
})();

// Layer pages: thumbnails twice as large (pixels kept sharp), toggled by the zoom button.
(function () {
  var zoom = document.getElementById("zoom");
  var grid = document.getElementById("channels");
  if (!zoom || !grid) return;
  zoom.addEventListener("click", function () {
    var on = zoom.getAttribute("aria-pressed") !== "true";
    zoom.setAttribute("aria-pressed", String(on));
    grid.classList.toggle("zoomed", on);
    grid.querySelectorAll("img.thumb").forEach(function (img) {
      img.style.width = on && img.naturalWidth ? (2 * img.naturalWidth) + "px" : "";
    });
  });
})();

// Unit pages: show the projections of one rule, or all three.
(function () {
  var box = document.getElementById("rules");
  if (!box) return;
  box.addEventListener("change", function (e) {
    var rule = e.target.value;
    document.querySelectorAll("img[data-rule]").forEach(function (img) {
      img.hidden = rule !== "all" && img.getAttribute("data-rule") !== rule;
    });
  });
})();
