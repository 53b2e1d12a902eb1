// Draws the live-accuracy plot from the JSON the server put in the page (no inline script: the CSP forbids it).
(function () {
  var data = document.getElementById("accuracy-data");
  var target = document.getElementById("accuracy-plot");
  if (!data || !target || typeof Plotly === "undefined") { return; }
  var figure = JSON.parse(data.textContent);
  Plotly.newPlot(target, figure.data, figure.layout, {displaylogo: false, responsive: true});
})();
