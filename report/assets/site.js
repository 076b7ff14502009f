/* Draws every chart of the page from window.TB_CHARTS (inline JSON written by the report). */
(function () {
  "use strict";
  var charts = window.TB_CHARTS || [];

  // A chart's legend sits at the bottom of the figure (`yref: "container"`, see charts.rs),
  // below the plot and its x-axis title (AXIS px). Its height depends on the entries and on
  // the width (a horizontal legend wraps), so it is measured once drawn; when the bottom
  // margin is too small for it (or far too large), the margin becomes AXIS plus the legend's
  // height and the figure grows or shrinks by as much, so the plot keeps its height. charts.rs
  // leaves room for one row, so most charts are drawn once. Redone after every redraw (a
  // resize rewraps the legend).
  var AXIS = 50;
  function fitLegend(el, above) {
    var box = el.querySelector(".legend .scrollbox");
    var full = el._fullLayout;
    if (!box || !full || !full.showlegend) { return; }
    var bottom = AXIS + Math.ceil(box.getBBox().height) + 8;
    var b = full.margin.b;
    if (b >= bottom - 1 && b <= bottom + 24) { return; }
    Plotly.relayout(el, { "margin.b": bottom, height: above + bottom });
  }

  function draw(c, el) {
    var legendBelow = c.layout.legend && c.layout.legend.yref === "container";
    // The figure's height above its bottom margin.
    var above = c.layout.height - c.layout.margin.b;
    var drawn = Plotly.newPlot(el, c.data, c.layout, { displaylogo: false, responsive: true });
    if (legendBelow) {
      drawn.then(fitLegend.bind(null, el, above));
      el.on("plotly_afterplot", fitLegend.bind(null, el, above));
    }
  }

  // A GPU page holds dozens of charts per run: each is drawn when it comes near the viewport
  // (a screen's height ahead), so the page opens at once instead of after drawing them all.
  // `drawAll` draws those not drawn yet (before printing; tests call it too).
  var waiting = {};
  function drawWaiting(id) {
    var w = waiting[id];
    if (!w) { return; }
    delete waiting[id];
    if (observer) { observer.unobserve(w.el); }
    draw(w.chart, w.el);
  }
  function drawAll() { Object.keys(waiting).forEach(drawWaiting); }
  var observer = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (e) {
      if (e.isIntersecting) { drawWaiting(e.target.id); }
    });
  }, { rootMargin: "100% 0px" }) : null;
  for (var i = 0; i < charts.length; i++) {
    var el = document.getElementById(charts[i].id);
    if (!el) { continue; }
    waiting[charts[i].id] = { chart: charts[i], el: el };
    if (observer) { observer.observe(el); }
  }
  if (!observer) { drawAll(); }
  window.addEventListener("beforeprint", drawAll);
  window.TB_drawAllCharts = drawAll;
})();
