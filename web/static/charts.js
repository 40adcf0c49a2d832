// The overview's charts, drawn by uPlot (vendored: static/vendor/uplot-1.6.32) from the
// history the node sends first and the points it pushes after.
(function () {
  "use strict";
  // A point is [unix seconds, queued, scheduled, active, succeeded, dead, cancelled].
  var data = { waiting: [[], [], []], finished: [[], [], []] };
  var charts = {};

  function lastHour() {
    var now = Date.now() / 1000;
    return [now - 3600, now];
  }

  function make(id, title, series, key) {
    var el = document.getElementById(id);
    charts[key] = new uPlot({
      title: title, width: 520, height: 240,
      series: [{}].concat(series.map(function (s) {
        return { label: s[0], stroke: s[1], width: 2 };
      })),
      scales: { x: { time: true, range: lastHour } },
      axes: [{}, { size: 60 }],
    }, data[key], el);
  }

  function add(point) {
    if (!point) {
      return;
    }
    var last = data.waiting[0];
    if (last.length && last[last.length - 1] >= point[0]) {
      return;
    }
    data.waiting[0].push(point[0]);
    data.waiting[1].push(point[1] + point[2]);
    data.waiting[2].push(point[3]);
    data.finished[0].push(point[0]);
    data.finished[1].push(point[4]);
    data.finished[2].push(point[5]);
    if (data.waiting[0].length > 360) {
      [data.waiting, data.finished].forEach(function (d) {
        d.forEach(function (col) { col.shift(); });
      });
    }
  }

  function redraw() {
    charts.waiting.setData(data.waiting);
    charts.finished.setData(data.finished);
  }

  make("chart-waiting", "Waiting and running", [["waiting", "#1a4fb0"], ["running", "#e08a00"]],
       "waiting");
  make("chart-finished", "Finished (stored)", [["succeeded", "#17702c"], ["dead", "#a11"]],
       "finished");
  document.addEventListener("gotask:history", function (event) {
    event.detail.forEach(add);
    redraw();
  });
  document.addEventListener("gotask:point", function (event) {
    add(event.detail);
    redraw();
  });
})();
