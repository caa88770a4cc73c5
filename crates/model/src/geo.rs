//! Distances between places on Earth, for ordering regions by nearness.

/// Great-circle distance between two points (latitude, longitude in degrees), in kilometres
/// (haversine, mean Earth radius).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::distance_km;

    #[test]
    fn distances_are_great_circle_kilometres() {
        let paris = (48.86, 2.35);
        let new_york = (40.71, -74.01);
        let d = distance_km(paris, new_york);
        assert!((5800.0..5900.0).contains(&d), "{d}");
        assert!(distance_km(paris, paris).abs() < 1e-9);
    }
}
