/* mkdocs-layerheat loader: builds every heatmap of the page with BokehJS from the data the page carries (see
   mkdocs_layerheat/figure.py for its fields), also after Material's instant navigation, and keeps the figures'
   text colours in step with the page's light or dark mode: Material for MkDocs' palette (data-md-color-scheme
   on <body>), MkDocs' own theme and other Bootstrap 5.3 themes (data-bs-theme on <html>: light, dark, or auto
   for the system's preference), else what the page declares through CSS color-scheme; themes without a dark
   mode (readthedocs) stay light. */
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
      if (model.type === "Text") return; // the words a logit lens writes in its cells keep their contrast inks
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

  // Float32 little-endian, base64: the matrix, row-major.
  function floats(base64) {
    var text = atob(base64);
    var view = new DataView(new ArrayBuffer(text.length));
    for (var i = 0; i < text.length; i++) view.setUint8(i, text.charCodeAt(i));
    var out = new Float32Array(text.length / 4);
    for (var k = 0; k < out.length; k++) out[k] = view.getFloat32(4 * k, true);
    return out;
  }

  // The values shown: the raw ones, an affine map of them per row, column or overall, or their own matrix.
  function shown(d, raw) {
    if (d.values) return floats(d.values);
    if (!d.fit) return raw;
    var n = d.shape[1], fit = d.fit, out = new Float32Array(raw.length);
    for (var i = 0; i < raw.length; i++) {
      var g = fit.axis === "row" ? Math.floor(i / n) : fit.axis === "column" ? i % n : 0;
      out[i] = raw[i] * fit.scale[g] + fit.offset[g];
    }
    return out;
  }

  function sparse(map, n, fallback) {
    var out = [];
    for (var i = 0; i < n; i++) out.push(map && i in map ? map[i] : fallback);
    return out;
  }

  function range(n, step) {
    var out = [];
    for (var i = 0; i < n; i += step || 1) out.push(i);
    return out;
  }

  // Hover text for a cell of the image: "$x{token}" names the token, "$x{raw}" gives the raw value before
  // normalisation, "$x{top}" a logit lens's top tokens, "$y{layer}" the layer label; cells are looked up
  // from the pointer's data coordinates.
  var HOVER_CELL = [
    "const n = labels.length, i = Math.max(0, Math.min(n - 1, Math.round(special_vars.x)));",
    "const j = Math.max(0, Math.min(layers.length - 1, Math.round(special_vars.y)));",
    "if (format === 'token') return labels[i] + ' (position ' + i + (kinds[i] === 'text' ? '' : ', ' + kinds[i]) +",
    "                               (notes[i] ? ', ' + notes[i] : '') + ')';",
    "if (format === 'layer') return String(layers[j]);",
    "if (format === 'top') return top.length ? top[top.length === n * layers.length ? j * n + i : 0] : '';",
    "const v = raw[j * n + i];",
    "return Number.isNaN(v) ? 'n/a' : v.toFixed(3);"
  ].join("\n");

  function panel(d, layerLabel, linked) {
    var B = window.Bokeh, n = d.shape[1], m = d.shape[0];
    var raw = floats(d.raw), values = shown(d, raw);
    var mapper = new B.LinearColorMapper({
      palette: window.layerheatPalettes[d.palette].match(/.{6}/g).map(function (c) { return "#" + c; }),
      low: d.scale[0], high: d.scale[1], nan_color: "#d9d9d9"
    });
    var options = {
      x_range: linked || new B.Range1d({ start: -0.5, end: n - 0.5 }),
      y_range: new B.Range1d({ start: -0.5, end: m - 0.5 }), // row i of the matrix at y = i, labelled with its layer
      height: d.height, sizing_mode: "stretch_width", min_width: d.width, // long texts scroll rather than squash
      tools: "pan,xwheel_zoom,box_zoom,reset,save", toolbar_location: "above"
    };
    if (d.title) options.title = d.title;
    var fig = B.Plotting.figure(options);
    var matrix = B.require("core/util/ndarray").ndarray(values, { shape: d.shape }); // BokehJS's typed 2-D array
    var image = fig.image({ image: [matrix], x: -0.5, y: -0.5, dw: n, dh: m, color_mapper: mapper });
    [["above", "triangle"], ["below", "inverted_triangle"]].forEach(function (mark) { // beyond the colour scale
      var cells = d[mark[0]] || [];
      if (cells.length) fig.scatter({
        x: cells.map(function (c) { return c % n; }), y: cells.map(function (c) { return Math.floor(c / n); }),
        marker: mark[1], size: 6, fill_color: "white", line_color: "black", line_width: 0.5
      });
    });
    var top = d.top || [];
    var cell = new B.CustomJSHover({
      args: { labels: d.tokens, kinds: sparse(d.kinds, n, "text"), layers: d.layers, notes: sparse(d.notes, n, ""),
              raw: raw, top: top },
      code: HOVER_CELL
    });
    var tooltips = [["token", "$x{token}"], ["layer", "$y{layer}"], [d.metric, "@image{0.000}"]];
    if (d.show_raw) tooltips.push(["raw value", "$x{raw}"]);
    if (top.length) tooltips.push([top.length > 1 ? "lens top 5" : "", "$x{top}"]);
    fig.add_tools(new B.HoverTool({ renderers: [image], tooltips: tooltips, formatters: { "$x": cell, "$y": cell } }));
    if (d.words) fig.text({
      x: d.words.map(function (w) { return w[1]; }), y: d.words.map(function (w) { return w[0]; }),
      text: d.words.map(function (w) { return w[2]; }), text_color: d.words.map(function (w) { return w[3]; }),
      text_font_size: "7pt", text_align: "center", text_baseline: "middle"
    });
    var ticks = sparse(d.marked, n, null).map(function (label, i) { return label === null ? d.tokens[i] : label; });
    fig.xaxis.ticker = new B.FixedTicker({ ticks: range(n) });
    fig.xaxis.major_label_overrides = new Map(ticks.map(function (label, i) { return [i, label]; }));
    fig.xaxis.major_label_orientation = d.rotated ? Math.PI / 2 : 0;
    var labelled = range(m, d.step);
    fig.yaxis.ticker = new B.FixedTicker({ ticks: labelled });
    fig.yaxis.major_label_overrides = new Map(labelled.map(function (i) { return [i, d.layers[i]]; }));
    fig.yaxis.axis_label = layerLabel;
    fig.grid.visible = false;
    fig.axis.major_tick_line_color = null;
    fig.axis.axis_line_color = null;
    fig.outline_line_color = null;
    var bar = { color_mapper: mapper, width: 12, title: d.bar, ticker: new B.BasicTicker() };
    if (d.unit) {
      bar.ticker = new B.FixedTicker({ ticks: [0, 0.2, 0.4, 0.6, 0.8, 1] });
      bar.formatter = new B.PrintfTickFormatter({ format: "%.1f" });
    }
    fig.add_layout(new B.ColorBar(bar), "right");
    return fig;
  }

  function build(data) {
    var figures = [];
    data.panels.forEach(function (d) {
      figures.push(panel(d, data.layer_label, d.linked && figures.length ? figures[0].x_range : null));
    });
    return figures.length === 1 ? figures[0] : new window.Bokeh.Column({ children: figures, sizing_mode: "stretch_width" });
  }

  function embedAll() {
    if (!window.Bokeh || !window.Bokeh.Plotting) return;
    document.querySelectorAll("script.layerheat-item").forEach(function (item) {
      var target = document.getElementById(item.dataset.target);
      if (!target || target.dataset.embedded) return;
      target.dataset.embedded = "1";
      window.Bokeh.Plotting.show(build(JSON.parse(item.textContent)), target).then(paintAll);
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
