/* mkdocs-layerheat loader: embeds every heatmap of the page with BokehJS, also after instant navigation. */
(function () {
  function embedAll() {
    if (!window.Bokeh) return;
    document.querySelectorAll("script.layerheat-item").forEach(function (item) {
      var target = document.getElementById(item.dataset.target);
      if (!target || target.dataset.embedded) return;
      target.dataset.embedded = "1";
      Bokeh.embed.embed_item(JSON.parse(item.textContent), target.id);
    });
  }
  if (window.document$ && typeof window.document$.subscribe === "function") {
    window.document$.subscribe(embedAll); // Material for MkDocs: fires on every (instant) page load
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", embedAll);
  } else {
    embedAll();
  }
})();
