/* mkdocs-layerheat loader: embeds every heatmap of the page with BokehJS, also after Material's
   instant navigation, and keeps the figures' text colours in step with the light/dark palette. */
(function () {
  var LIGHT = { text: "#444444" };
  var DARK = { text: "#d5d7e2" };

  function dark() {
    var scheme = document.body && document.body.getAttribute("data-md-color-scheme");
    if (scheme) return scheme === "slate";
    return false; // themes without a palette toggle: the figure's own light styling
  }

  function paint(doc) {
    var colours = dark() ? DARK : LIGHT;
    doc.all_models.forEach(function (model) {
      var props = model.properties || {};
      var update = {};
      ["major_label_text_color", "axis_label_text_color", "title_text_color", "text_color"].forEach(function (name) {
        if (name in props) update[name] = colours.text;
      });
      if ("background_fill_color" in props) update.background_fill_color = null;
      if ("border_fill_color" in props) update.border_fill_color = null;
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
  // Material's palette toggle changes data-md-color-scheme on <body>: repaint without reloading
  new MutationObserver(paintAll).observe(document.body, { attributes: true, attributeFilter: ["data-md-color-scheme"] });
})();
