/* Draws every chart of the page from window.TB_CHARTS (inline JSON written by the report). */
(function () {
  "use strict";
  var charts = window.TB_CHARTS || [];

  // A chart's legend sits at the bottom of the figure (`yref: "container"`, see charts.rs),
  // below the plot and its x-axis title. Its height depends on the entries and on the width
  // (a horizontal legend wraps), so it is measured once drawn: the bottom margin becomes the
  // axis' own space plus the legend's, and the figure grows by as much, so the plot keeps its
  // height. Redone after every redraw (a resize rewraps the legend).
  function fitLegend(el, base) {
    var box = el.querySelector(".legend .scrollbox");
    var full = el._fullLayout;
    if (!box || !full || !full.showlegend) { return; }
    var need = Math.ceil(box.getBBox().height) + 8;
    var bottom = base.bottom + need;
    if (Math.abs(full.margin.b - bottom) <= 1) { return; }
    Plotly.relayout(el, { "margin.b": bottom, height: base.height + need });
  }

  for (var i = 0; i < charts.length; i++) {
    var c = charts[i];
    var el = document.getElementById(c.id);
    if (!el) { continue; }
    var legendBelow = c.layout.legend && c.layout.legend.yref === "container";
    var base = { height: c.layout.height, bottom: c.layout.margin.b };
    var drawn = Plotly.newPlot(el, c.data, c.layout, { displaylogo: false, responsive: true });
    if (legendBelow) {
      drawn.then(fitLegend.bind(null, el, base));
      el.on("plotly_afterplot", fitLegend.bind(null, el, base));
    }
  }
})();
