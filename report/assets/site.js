/* Draws every chart of the page from window.TB_CHARTS (inline JSON written by the report). */
(function () {
  "use strict";
  var charts = window.TB_CHARTS || [];
  for (var i = 0; i < charts.length; i++) {
    var c = charts[i];
    var el = document.getElementById(c.id);
    if (!el) { continue; }
    Plotly.newPlot(el, c.data, c.layout, { displaylogo: false, responsive: true });
  }
})();
