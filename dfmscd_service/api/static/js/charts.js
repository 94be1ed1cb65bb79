// Live line charts on the vendored uPlot (a global from static/vendor/uplot/uPlot.iife.min.js).

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
const HEIGHT = 200;

/**
 * A chart of epoch -> one line per series, sized to its container (and re-sized with it).
 * push(epoch, [values]) adds a point to every series; null leaves a gap (e.g. warm-up loss).
 */
export function lineChart(container, seriesNames, {yLabel = "", digits = 3} = {}) {
  const data = [[], ...seriesNames.map(() => [])];
  const width = () => Math.max(240, container.clientWidth - 2);
  const plot = new window.uPlot({
    width: width(),
    height: HEIGHT,
    legend: {show: true},
    cursor: {drag: {x: false, y: false}},
    scales: {x: {time: false}},
    axes: [
      {label: "epoch", size: 36, labelSize: 18, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]},
      {label: yLabel, size: 56, labelSize: 18},
    ],
    series: [
      {label: "epoch"},
      ...seriesNames.map((name, i) => ({label: name, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
                                         points: {size: 5}, value: (u, v) => (v == null ? "–" : v.toFixed(digits))})),
    ],
  }, data, container);
  const observer = new ResizeObserver(() => plot.setSize({width: width(), height: HEIGHT}));
  observer.observe(container);
  return {
    push(x, values) {
      data[0].push(x);
      values.forEach((v, i) => data[i + 1].push(typeof v === "number" && isFinite(v) ? v : null));
      plot.setData(data);
      container.dataset.points = String(data[0].length);
    },
    destroy() { observer.disconnect(); plot.destroy(); },
  };
}
