//! Triangle meshes: what every image→parts stage hands to the sampler.

/// An indexed triangle mesh. Vertices are in the producing stage's own frame; the
/// sampler normalises the whole assembly into [-1, 1]³ afterwards.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TriMesh {
    pub vertices: Vec<[f32; 3]>,
    pub faces: Vec<[u32; 3]>,
}

impl TriMesh {
    pub fn new(vertices: Vec<[f32; 3]>, faces: Vec<[u32; 3]>) -> Self {
        Self { vertices, faces }
    }

    pub fn is_empty(&self) -> bool {
        self.faces.is_empty()
    }

    /// Corner positions of face `f`.
    pub fn triangle(&self, f: usize) -> [[f32; 3]; 3] {
        let [a, b, c] = self.faces[f];
        [self.vertices[a as usize], self.vertices[b as usize], self.vertices[c as usize]]
    }

    /// Area of every face, in f64 (sums over 10⁵ faces stay exact enough).
    pub fn face_areas(&self) -> Vec<f64> {
        (0..self.faces.len()).map(|f| triangle_area(self.triangle(f))).collect()
    }

    pub fn area(&self) -> f64 {
        self.face_areas().iter().sum()
    }

    /// Axis-aligned bounds (min, max); `None` for a mesh without vertices.
    pub fn bounds(&self) -> Option<([f32; 3], [f32; 3])> {
        let first = *self.vertices.first()?;
        Some(self.vertices.iter().fold((first, first), |(mut lo, mut hi), v| {
            for i in 0..3 {
                lo[i] = lo[i].min(v[i]);
                hi[i] = hi[i].max(v[i]);
            }
            (lo, hi)
        }))
    }

    /// Appends another mesh (indices shifted).
    pub fn append(&mut self, other: &TriMesh) {
        let base = self.vertices.len() as u32;
        self.vertices.extend_from_slice(&other.vertices);
        self.faces.extend(other.faces.iter().map(|f| [f[0] + base, f[1] + base, f[2] + base]));
    }

    /// Applies `f` to every vertex.
    pub fn map_vertices(mut self, f: impl Fn([f32; 3]) -> [f32; 3]) -> Self {
        for v in &mut self.vertices {
            *v = f(*v);
        }
        self
    }

    /// Checks indices and coordinates; a stage's output must pass before sampling.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.vertices.len() as u32;
        if let Some(f) = self.faces.iter().find(|f| f.iter().any(|&i| i >= n)) {
            return Err(format!("face {f:?} indexes past {n} vertices"));
        }
        if self.vertices.iter().flatten().any(|x| !x.is_finite()) {
            return Err("non-finite vertex coordinate".into());
        }
        Ok(())
    }
}

pub fn triangle_area([a, b, c]: [[f32; 3]; 3]) -> f64 {
    let u = [(b[0] - a[0]) as f64, (b[1] - a[1]) as f64, (b[2] - a[2]) as f64];
    let v = [(c[0] - a[0]) as f64, (c[1] - a[1]) as f64, (c[2] - a[2]) as f64];
    let x = u[1] * v[2] - u[2] * v[1];
    let y = u[2] * v[0] - u[0] * v[2];
    let z = u[0] * v[1] - u[1] * v[0];
    0.5 * (x * x + y * y + z * z).sqrt()
}
