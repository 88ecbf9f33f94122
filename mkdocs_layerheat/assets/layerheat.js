/* mkdocs-layerheat loader: embeds every heatmap of the page with BokehJS, also after Material's
   instant navigation, and keeps the figures' text colours in step with the page's light or dark mode:
   Material for MkDocs' palette (data-md-color-scheme on <body>), MkDocs' own theme and other Bootstrap 5.3
   themes (data-bs-theme on <html>: light, dark, or auto for the system's preference), else what the page
   declares through CSS color-scheme; themes without a dark mode (readthedocs) stay light. */
(function () {
  var LIGHT = { text: "#444444" };
  var DARK = { text: "#d5d7e2" };
  var system = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

  function prefersDark() {
    return !!(system && system.matches);
  }

  function dark() {
    var body = document.body;
    var scheme = body && body.getAttribute("data-md-color-scheme");
    if (scheme === "slate") return true; // Material's dark scheme
    if (scheme === "default") return false;
    var bs = document.documentElement.getAttribute("data-bs-theme");
    if (bs === "dark") return true;
    if (bs === "light") return false;
    if (bs === "auto") return prefersDark(); // before the mkdocs theme's darkmode.js has resolved it
    // a custom Material scheme or another theme: the color-scheme its CSS declares (slate and Bootstrap's dark set it)
    var declared = body ? String(window.getComputedStyle(body).colorScheme || "") : "";
    if (/dark/.test(declared)) return /light/.test(declared) ? prefersDark() : true;
    return false;
  }

  function paint(doc) {
    var colours = dark() ? DARK : LIGHT;
    doc.all_models.forEach(function (model) {
      if (model.type === "Text") return;  // the words a logit lens writes in its cells keep their contrast inks
      var props = model.properties || {};
      var update = {};
      ["major_label_text_color", "axis_label_text_color", "title_text_color", "text_color"].forEach(function (name) {
        if (name in props && model[name] !== colours.text) update[name] = colours.text;
      });
      if ("background_fill_color" in props && model.background_fill_color !== null) update.background_fill_color = null;
      if ("border_fill_color" in props && model.border_fill_color !== null) update.border_fill_color = null;
      if (Object.keys(update).length) model.setv(update);
    });
  }

  function paintAll() {
    if (window.Bokeh) window.Bokeh.documents.forEach(paint);
  }

  function embedAll() {
    if (!window.Bokeh) return;
    document.querySelectorAll("script.layerheat-item").forEach(function (item) {
      var target = document.getElementById(item.dataset.target);
      if (!target || target.dataset.embedded) return;
      target.dataset.embedded = "1";
      Bokeh.embed.embed_item(JSON.parse(item.textContent), target.id).then(paintAll);
    });
  }

  if (window.document$ && typeof window.document$.subscribe === "function") {
    window.document$.subscribe(embedAll); // Material for MkDocs: fires on every (instant) page load
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", embedAll);
  } else {
    embedAll();
  }
  // Repaint without reloading when the mode changes: Material's palette toggle (on <body>), the mkdocs
  // theme's colour-mode menu (on <html>), and the system's preference (for "auto").
  var watch = ["data-md-color-scheme", "data-bs-theme"];
  new MutationObserver(paintAll).observe(document.documentElement, { attributes: true, attributeFilter: watch });
  if (document.body) new MutationObserver(paintAll).observe(document.body, { attributes: true, attributeFilter: watch });
  if (system) {
    if (system.addEventListener) system.addEventListener("change", paintAll);
    else if (system.addListener) system.addListener(paintAll);
  }
})();
