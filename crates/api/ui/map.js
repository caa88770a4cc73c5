// A map of the regions drawn from their coordinates: an equirectangular view of the part of the
// world they are in, with a graticule every 15°, and each region a marker coloured by its state.

import { h, svg } from "./dom.js";
import { severity } from "./format.js";

const WIDTH = 720;
const HEIGHT = 360;
/** Degrees shown around the regions, at least. */
const MARGIN_DEG = 12;

/** The view (`{west, north, deg}`: degrees per unit) showing every region with a margin, 2:1. */
function view(regions) {
  if (regions.length === 0) return { west: -180, north: 90, deg: 360 / WIDTH };
  const lons = regions.map((r) => r.lon);
  const lats = regions.map((r) => r.lat);
  let west = Math.min(...lons) - MARGIN_DEG;
  let east = Math.max(...lons) + MARGIN_DEG;
  let south = Math.min(...lats) - MARGIN_DEG;
  let north = Math.max(...lats) + MARGIN_DEG;
  // Widen the narrower side to the map's 2:1 shape, centred, within the world.
  const deg = Math.min(360 / WIDTH, Math.max((east - west) / WIDTH, (north - south) / HEIGHT));
  const midLon = (west + east) / 2;
  const midLat = (north + south) / 2;
  west = Math.min(Math.max(midLon - (deg * WIDTH) / 2, -180), 180 - deg * WIDTH);
  north = Math.max(Math.min(midLat + (deg * HEIGHT) / 2, 90), -90 + deg * HEIGHT);
  return { west, north, deg };
}

/** A map of `regions` (`{name, lat, lon, state}`), titled by `title`. */
export function regionMap(regions, title) {
  const { west, north, deg } = view(regions);
  const x = (lon) => (lon - west) / deg;
  const y = (lat) => (north - lat) / deg;
  const east = west + deg * WIDTH;
  const south = north - deg * HEIGHT;
  const lines = [];
  for (let lon = Math.ceil(west / 15) * 15; lon <= east; lon += 15) {
    lines.push(svg("line", { class: lon === 0 ? "meridian" : null, x1: x(lon), x2: x(lon), y1: 0, y2: HEIGHT }));
  }
  for (let lat = Math.ceil(south / 15) * 15; lat <= north; lat += 15) {
    lines.push(svg("line", { class: lat === 0 ? "equator" : null, x1: 0, x2: WIDTH, y1: y(lat), y2: y(lat) }));
  }
  const markers = regions.map((r) => {
    // A label runs to the left of a marker in the right part of the map, so that it stays in.
    const left = x(r.lon) > WIDTH * 0.6;
    return svg("g", {
      class: `marker ${severity(r.state)}`, "data-region": r.name,
      transform: `translate(${x(r.lon).toFixed(1)} ${y(r.lat).toFixed(1)})`,
    },
    svg("circle", { r: 7 }),
    svg("text", { x: left ? -11 : 11, y: 4, class: left ? "left" : null }, `${r.name} · ${r.state}`));
  });
  const description = regions.length
    ? regions.map((r) => `${r.name} (${r.state}) at ${r.lat}°, ${r.lon}°`).join("; ")
    : "no regions";
  return h("figure", { class: "map" },
    h("figcaption", { id: "region-map-title" }, title),
    svg("svg", {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img",
      "aria-labelledby": "region-map-title region-map-desc",
    },
    svg("desc", { id: "region-map-desc" }, description),
    svg("rect", { class: "sea", x: 0, y: 0, width: WIDTH, height: HEIGHT }),
    svg("g", { class: "graticule" }, lines),
    markers));
}
