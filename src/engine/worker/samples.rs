//! The bundled sample photographs (assets/samples, licences in assets/LICENSES.md), embedded in
//! the binary so the app finds them wherever it is installed.

use image::RgbImage;

/// (display name, file name, encoded bytes).
pub const SAMPLES: &[(&str, &str, &[u8])] = &[
    ("Astronaut", "astronaut.jpg", include_bytes!("../../../assets/samples/astronaut.jpg")),
    ("Cat", "chelsea.jpg", include_bytes!("../../../assets/samples/chelsea.jpg")),
    ("Coffee", "coffee.jpg", include_bytes!("../../../assets/samples/coffee.jpg")),
    ("Rocket", "rocket.jpg", include_bytes!("../../../assets/samples/rocket.jpg")),
];

/// Decodes a bundled sample. They are known-good JPEGs, but a broken build must still not panic.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, String> {
    image::load_from_memory(bytes).map(|i| i.to_rgb8()).map_err(|e| format!("bundled sample image is unreadable: {e}"))
}
