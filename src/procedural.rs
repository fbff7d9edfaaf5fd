//! The `procedural` pipeline: deterministic, part-labelled primitive assemblies.
//!
//! It is what `generate` can always run (no weights, no GPU), what CI exercises end to
//! end, and what a failed model run falls back to with `--fallback procedural`. Each
//! template builds a recognisable object from boxes, frusta, ellipsoids and tori with real
//! part names; proportions vary slightly with the seed so a seed still means something.
//! Concepts are matched to templates by keyword; anything else gets a generic assembly.

use crate::geometry::mesh::TriMesh;
use crate::geometry::primitives::{cuboid, cylinder, ellipsoid, frustum, sphere, torus};
use crate::rng::Rng;

/// A named part of an assembly.
#[derive(Debug, Clone)]
pub struct NamedPart {
    pub name: String,
    pub mesh: TriMesh,
}

fn part(name: &str, mesh: TriMesh) -> NamedPart {
    NamedPart { name: name.to_string(), mesh }
}

/// Seeded proportions: `j(1.0)` is 1.0 ± 10 %.
struct Jitter(Rng);

impl Jitter {
    fn j(&mut self, x: f32) -> f32 {
        x * (0.9 + 0.2 * self.0.uniform() as f32)
    }
}

type Template = fn(&mut Jitter) -> Vec<NamedPart>;

/// Keyword → template. The first template with a keyword contained in the concept wins,
/// so longer, more specific keywords come first.
const TEMPLATES: &[(&[&str], &str, Template)] = &[
    (&["sailboat", "yacht"], "sailboat", sailboat),
    (&["snowman"], "snowman", snowman),
    (&["motorcycle", "bicycle", "bike", "scooter"], "two-wheeler", two_wheeler),
    (&["helicopter"], "helicopter", helicopter),
    (&["airplane", "aeroplane", "plane", "jet", "aircraft"], "airplane", airplane),
    (&["rocket", "spaceship"], "rocket", rocket),
    (&["boat", "ship", "canoe"], "boat", boat),
    (&["train", "locomotive"], "train", train),
    (&["car", "truck", "bus", "van", "taxi", "jeep", "tractor"], "car", car),
    (&["chair", "stool"], "chair", chair),
    (&["sofa", "couch"], "sofa", sofa),
    (&["bed"], "bed", bed),
    (&["table", "desk"], "table", table),
    (&["bookshelf", "shelf", "cabinet", "dresser"], "shelf", shelf),
    (&["lamp", "lantern"], "lamp", lamp),
    (&["teapot", "kettle"], "teapot", teapot),
    (&["mug", "cup"], "mug", mug),
    (&["bottle", "vase", "jar"], "bottle", bottle),
    (&["umbrella"], "umbrella", umbrella),
    (&["sword", "dagger", "knife"], "sword", sword),
    (&["hammer", "axe", "mallet"], "hammer", hammer),
    (&["laptop"], "laptop", laptop),
    (&["headphones", "headset"], "headphones", headphones),
    (&["clock", "watch"], "clock", clock),
    (&["guitar", "violin"], "guitar", guitar),
    (&["house", "cottage", "barn", "hut", "castle", "church"], "house", house),
    (&["mushroom"], "mushroom", mushroom),
    (&["cactus"], "cactus", cactus),
    (&["flower", "rose", "tulip", "sunflower"], "flower", flower),
    (&["tree", "palm", "pine", "oak"], "tree", tree),
    (&["spider"], "spider", spider),
    (&["butterfly", "moth", "dragonfly"], "butterfly", butterfly),
    (&["turtle", "tortoise"], "turtle", turtle),
    (&["fish", "shark", "dolphin", "whale"], "fish", fish),
    (&["eagle", "bird", "duck", "owl", "parrot", "penguin", "chicken", "swan", "pigeon"], "bird", bird),
    (&["giraffe"], "giraffe", giraffe),
    (&["elephant"], "elephant", elephant),
    (
        &[
            "dog", "cat", "horse", "cow", "bear", "lion", "tiger", "pig", "sheep", "wolf", "fox", "deer", "rabbit",
            "goat",
        ],
        "quadruped",
        quadruped,
    ),
    (&["robot", "person", "man", "woman", "human", "astronaut", "knight", "soldier"], "humanoid", humanoid),
];

/// The template a concept maps to (by keyword on whole words), or `None` for the generic one.
pub fn template_name(normalized: &str) -> Option<&'static str> {
    find_template(normalized).map(|(name, _)| name)
}

fn find_template(normalized: &str) -> Option<(&'static str, Template)> {
    let words: Vec<String> = normalized
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_end_matches('s').to_string())
        .collect();
    TEMPLATES.iter().find_map(|(keys, name, f)| {
        keys.iter().any(|k| words.iter().any(|w| w == k.trim_end_matches('s'))).then_some((*name, *f))
    })
}

/// Builds the assembly for a concept. `parts` caps the number of parts (the smallest are
/// merged into their nearest neighbour); the generic assembly uses it as its count.
pub fn build(normalized: &str, parts: Option<usize>, seed: u64) -> Vec<NamedPart> {
    let mut jit = Jitter(Rng::derive(seed, "procedural"));
    let mut out = match find_template(normalized) {
        Some((_, f)) => f(&mut jit),
        None => generic(&mut jit, parts.unwrap_or(crate::concept::DEFAULT_PARTS)),
    };
    if let Some(n) = parts {
        merge_down_to(&mut out, n.max(1));
    }
    out
}

/// Merges the smallest part into the part with the nearest centroid until `n` remain.
fn merge_down_to(parts: &mut Vec<NamedPart>, n: usize) {
    while parts.len() > n {
        let areas: Vec<f64> = parts.iter().map(|p| p.mesh.area()).collect();
        let smallest = (0..parts.len()).min_by(|&a, &b| areas[a].total_cmp(&areas[b])).unwrap();
        let centre = |m: &TriMesh| {
            let (lo, hi) = m.bounds().unwrap_or(([0.0; 3], [0.0; 3]));
            [(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0, (lo[2] + hi[2]) / 2.0]
        };
        let c = centre(&parts[smallest].mesh);
        let target = (0..parts.len())
            .filter(|&i| i != smallest)
            .min_by(|&a, &b| {
                let d = |i: usize| {
                    let o = centre(&parts[i].mesh);
                    (0..3).map(|k| (o[k] - c[k]).powi(2)).sum::<f32>()
                };
                d(a).total_cmp(&d(b))
            })
            .unwrap();
        let removed = parts.remove(smallest);
        let target = if target > smallest { target - 1 } else { target };
        parts[target].mesh.append(&removed.mesh);
    }
}

// ---------------------------------------------------------------------------------------
// Templates. Frame: +Y up, object roughly within a few units; the sampler normalises.

fn legs(j: &mut Jitter, name: &str, xz: [f32; 2], top: f32, bottom: f32, r: f32) -> Vec<NamedPart> {
    let r = j.j(r);
    [[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]]
        .iter()
        .map(|s| part(name, cylinder([s[0] * xz[0], bottom, s[1] * xz[1]], [s[0] * xz[0], top, s[1] * xz[1]], r)))
        .collect()
}

fn chair(j: &mut Jitter) -> Vec<NamedPart> {
    let (w, d, h) = (j.j(0.5), j.j(0.5), j.j(0.9));
    let mut p = vec![
        part("seat", cuboid([0.0, h, 0.0], [w, 0.05, d])),
        part("backrest", cuboid([0.0, h + j.j(0.5), -d + 0.04], [w, j.j(0.45), 0.04])),
    ];
    p.extend(legs(j, "leg", [w - 0.06, d - 0.06], h - 0.05, 0.0, 0.04));
    p
}

fn table(j: &mut Jitter) -> Vec<NamedPart> {
    let (w, d, h) = (j.j(1.2), j.j(0.7), j.j(1.5));
    let mut p = vec![part("tabletop", cuboid([0.0, h, 0.0], [w, 0.06, d]))];
    p.extend(legs(j, "leg", [w - 0.1, d - 0.1], h - 0.06, 0.0, 0.06));
    p
}

fn sofa(j: &mut Jitter) -> Vec<NamedPart> {
    let (w, d) = (j.j(1.6), j.j(0.6));
    vec![
        part("base", cuboid([0.0, 0.35, 0.0], [w, 0.2, d])),
        part("backrest", cuboid([0.0, 0.95, -d + 0.12], [w, j.j(0.4), 0.12])),
        part("left armrest", cuboid([-w - 0.12, 0.6, 0.0], [0.12, 0.3, d])),
        part("right armrest", cuboid([w + 0.12, 0.6, 0.0], [0.12, 0.3, d])),
        part("cushion", cuboid([0.0, 0.62, 0.08], [w - 0.05, 0.08, d - 0.12])),
    ]
}

fn bed(j: &mut Jitter) -> Vec<NamedPart> {
    let (w, l) = (j.j(1.0), j.j(1.6));
    vec![
        part("frame", cuboid([0.0, 0.25, 0.0], [w, 0.15, l])),
        part("mattress", cuboid([0.0, 0.5, 0.0], [w - 0.05, 0.1, l - 0.05])),
        part("headboard", cuboid([0.0, 0.8, -l - 0.05], [w, j.j(0.6), 0.05])),
        part("pillow", ellipsoid([0.0, 0.66, -l + 0.35], [w * 0.6, 0.08, 0.2])),
    ]
}

fn shelf(j: &mut Jitter) -> Vec<NamedPart> {
    let (w, h, d) = (j.j(0.8), j.j(1.8), j.j(0.3));
    let mut p = vec![
        part("left side", cuboid([-w, h / 2.0, 0.0], [0.03, h / 2.0, d])),
        part("right side", cuboid([w, h / 2.0, 0.0], [0.03, h / 2.0, d])),
    ];
    for i in 0..4 {
        p.push(part("shelf", cuboid([0.0, 0.05 + i as f32 * (h - 0.1) / 3.0, 0.0], [w, 0.03, d])));
    }
    p
}

fn lamp(j: &mut Jitter) -> Vec<NamedPart> {
    let h = j.j(1.4);
    vec![
        part("base", frustum([0.0, 0.0, 0.0], [0.0, 0.08, 0.0], j.j(0.3), 0.25)),
        part("pole", cylinder([0.0, 0.08, 0.0], [0.0, h, 0.0], 0.03)),
        part("shade", frustum([0.0, h - 0.1, 0.0], [0.0, h + 0.35, 0.0], j.j(0.4), 0.2)),
    ]
}

fn mug(j: &mut Jitter) -> Vec<NamedPart> {
    let (r, h) = (j.j(0.4), j.j(0.9));
    vec![
        part("body", cylinder([0.0, 0.0, 0.0], [0.0, h, 0.0], r)),
        part("handle", torus([r + 0.12, h / 2.0, 0.0], [0.0, 0.0, 1.0], j.j(0.2), 0.04)),
    ]
}

fn bottle(j: &mut Jitter) -> Vec<NamedPart> {
    let (r, h) = (j.j(0.35), j.j(1.1));
    vec![
        part("body", cylinder([0.0, 0.0, 0.0], [0.0, h, 0.0], r)),
        part("shoulder", frustum([0.0, h, 0.0], [0.0, h + 0.3, 0.0], r, 0.12)),
        part("neck", cylinder([0.0, h + 0.3, 0.0], [0.0, h + 0.6, 0.0], 0.12)),
        part("cap", cylinder([0.0, h + 0.6, 0.0], [0.0, h + 0.72, 0.0], 0.14)),
    ]
}

fn teapot(j: &mut Jitter) -> Vec<NamedPart> {
    let r = j.j(0.6);
    vec![
        part("body", ellipsoid([0.0, r * 0.8, 0.0], [r, r * 0.8, r])),
        part("spout", frustum([r * 0.8, r * 0.7, 0.0], [r * 1.6, r * 1.3, 0.0], 0.12, 0.06)),
        part("handle", torus([-r * 1.05, r * 0.85, 0.0], [0.0, 0.0, 1.0], 0.3, 0.05)),
        part("lid", ellipsoid([0.0, r * 1.6, 0.0], [r * 0.5, 0.12, r * 0.5])),
    ]
}

fn umbrella(j: &mut Jitter) -> Vec<NamedPart> {
    let h = j.j(1.8);
    vec![
        part("canopy", frustum([0.0, h - 0.4, 0.0], [0.0, h, 0.0], j.j(1.2), 0.05)),
        part("shaft", cylinder([0.0, 0.2, 0.0], [0.0, h, 0.0], 0.025)),
        part("handle", torus([0.12, 0.2, 0.0], [0.0, 0.0, 1.0], 0.12, 0.03)),
    ]
}

fn sword(j: &mut Jitter) -> Vec<NamedPart> {
    let l = j.j(2.0);
    vec![
        part("blade", cuboid([0.0, 0.5 + l / 2.0, 0.0], [0.08, l / 2.0, 0.015])),
        part("guard", cuboid([0.0, 0.48, 0.0], [j.j(0.3), 0.03, 0.05])),
        part("grip", cylinder([0.0, 0.1, 0.0], [0.0, 0.45, 0.0], 0.04)),
        part("pommel", sphere([0.0, 0.06, 0.0], 0.07)),
    ]
}

fn hammer(j: &mut Jitter) -> Vec<NamedPart> {
    let l = j.j(1.2);
    vec![
        part("handle", cylinder([0.0, 0.0, 0.0], [0.0, l, 0.0], 0.05)),
        part("head", cuboid([0.05, l + 0.1, 0.0], [j.j(0.3), 0.1, 0.1])),
    ]
}

fn laptop(j: &mut Jitter) -> Vec<NamedPart> {
    let (w, d) = (j.j(0.7), j.j(0.5));
    vec![
        part("base", cuboid([0.0, 0.02, 0.0], [w, 0.02, d])),
        part("screen", cuboid([0.0, 0.05 + d * 0.95, -d - 0.1], [w, d * 0.95, 0.02])),
    ]
}

fn headphones(j: &mut Jitter) -> Vec<NamedPart> {
    let r = j.j(0.6);
    vec![
        part("headband", torus([0.0, 0.3, 0.0], [0.0, 0.0, 1.0], r, 0.05)),
        part("left ear cup", frustum([-r - 0.05, 0.0, 0.0], [-r + 0.1, 0.0, 0.0], 0.22, 0.2)),
        part("right ear cup", frustum([r + 0.05, 0.0, 0.0], [r - 0.1, 0.0, 0.0], 0.22, 0.2)),
    ]
}

fn clock(j: &mut Jitter) -> Vec<NamedPart> {
    let r = j.j(0.8);
    vec![
        part("face", cylinder([0.0, r, -0.03], [0.0, r, 0.03], r)),
        part("rim", torus([0.0, r, 0.0], [0.0, 0.0, 1.0], r, 0.06)),
        part("hour hand", cuboid([0.0, r + 0.2, 0.05], [0.03, 0.2, 0.01])),
        part("minute hand", cuboid([0.25, r, 0.06], [0.3, 0.02, 0.01])),
    ]
}

fn guitar(j: &mut Jitter) -> Vec<NamedPart> {
    let s = j.j(1.0);
    vec![
        part("body", ellipsoid([0.0, 0.5 * s, 0.0], [0.45 * s, 0.55 * s, 0.12])),
        part("neck", cuboid([0.0, 1.5 * s, 0.0], [0.06, 0.6 * s, 0.04])),
        part("headstock", cuboid([0.0, 2.2 * s, 0.0], [0.09, 0.12, 0.03])),
    ]
}

fn house(j: &mut Jitter) -> Vec<NamedPart> {
    let (w, h, d) = (j.j(1.2), j.j(1.0), j.j(1.0));
    vec![
        part("walls", cuboid([0.0, h / 2.0, 0.0], [w, h / 2.0, d])),
        part("roof", frustum([0.0, h, 0.0], [0.0, h + j.j(0.8), 0.0], w * 1.45, 0.0)),
        part("door", cuboid([0.0, 0.3, d + 0.02], [0.18, 0.3, 0.02])),
        part("chimney", cuboid([w * 0.5, h + 0.5, 0.0], [0.1, 0.35, 0.1])),
    ]
}

fn mushroom(j: &mut Jitter) -> Vec<NamedPart> {
    let h = j.j(0.8);
    vec![
        part("stem", frustum([0.0, 0.0, 0.0], [0.0, h, 0.0], 0.2, 0.15)),
        part("cap", ellipsoid([0.0, h, 0.0], [j.j(0.6), 0.3, 0.6])),
    ]
}

fn cactus(j: &mut Jitter) -> Vec<NamedPart> {
    let h = j.j(2.0);
    vec![
        part("trunk", cylinder([0.0, 0.0, 0.0], [0.0, h, 0.0], 0.25)),
        part("left arm", cylinder([-0.2, h * 0.45, 0.0], [-0.6, h * 0.75, 0.0], 0.15)),
        part("right arm", cylinder([0.2, h * 0.55, 0.0], [0.55, h * 0.85, 0.0], 0.13)),
        part("pot", frustum([0.0, -0.4, 0.0], [0.0, 0.05, 0.0], 0.3, 0.4)),
    ]
}

fn flower(j: &mut Jitter) -> Vec<NamedPart> {
    let h = j.j(1.5);
    vec![
        part("stem", cylinder([0.0, 0.0, 0.0], [0.0, h, 0.0], 0.03)),
        part("petals", torus([0.0, h, 0.0], [0.0, 1.0, 0.2], j.j(0.25), 0.12)),
        part("center", sphere([0.0, h, 0.0], 0.13)),
        part("leaf", ellipsoid([0.15, h * 0.4, 0.0], [0.18, 0.04, 0.07])),
    ]
}

fn tree(j: &mut Jitter) -> Vec<NamedPart> {
    let h = j.j(1.4);
    vec![
        part("trunk", frustum([0.0, 0.0, 0.0], [0.0, h, 0.0], 0.2, 0.14)),
        part("canopy", ellipsoid([0.0, h + 0.6, 0.0], [j.j(0.9), j.j(0.9), 0.9])),
    ]
}

fn quadruped(j: &mut Jitter) -> Vec<NamedPart> {
    let (l, h) = (j.j(0.8), j.j(0.9));
    let mut p = vec![
        part("body", ellipsoid([0.0, h, 0.0], [l, 0.35, 0.3])),
        part("head", ellipsoid([l + 0.25, h + 0.35, 0.0], [0.25, 0.2, 0.18])),
        part("tail", cylinder([-l + 0.05, h + 0.05, 0.0], [-l - 0.4, h + 0.3, 0.0], 0.05)),
    ];
    p.extend(legs(j, "leg", [l * 0.7, 0.18], h - 0.2, 0.0, 0.08));
    p
}

fn giraffe(j: &mut Jitter) -> Vec<NamedPart> {
    let mut p = quadruped(j);
    let h = j.j(2.6);
    p[1] = part("head", ellipsoid([1.1, h, 0.0], [0.25, 0.14, 0.14]));
    p.insert(1, part("neck", cylinder([0.6, 1.0, 0.0], [1.0, h - 0.05, 0.0], 0.12)));
    p
}

fn elephant(j: &mut Jitter) -> Vec<NamedPart> {
    let mut p = quadruped(j);
    let h = j.j(1.3);
    p[0] = part("body", ellipsoid([0.0, h, 0.0], [0.9, 0.55, 0.5]));
    p[1] = part("head", ellipsoid([1.0, h + 0.3, 0.0], [0.35, 0.35, 0.3]));
    p.push(part("trunk", frustum([1.25, h + 0.2, 0.0], [1.35, 0.25, 0.0], 0.12, 0.06)));
    p.push(part("left ear", ellipsoid([0.9, h + 0.35, 0.35], [0.08, 0.3, 0.25])));
    p.push(part("right ear", ellipsoid([0.9, h + 0.35, -0.35], [0.08, 0.3, 0.25])));
    p
}

fn bird(j: &mut Jitter) -> Vec<NamedPart> {
    let s = j.j(1.0);
    vec![
        part("body", ellipsoid([0.0, 0.5, 0.0], [0.5 * s, 0.3, 0.28])),
        part("head", sphere([0.5 * s, 0.8, 0.0], 0.18)),
        part("beak", frustum([0.65 * s, 0.8, 0.0], [0.9 * s, 0.76, 0.0], 0.06, 0.0)),
        part("left wing", ellipsoid([-0.05, 0.6, 0.55], [0.3, 0.04, j.j(0.45)])),
        part("right wing", ellipsoid([-0.05, 0.6, -0.55], [0.3, 0.04, 0.45])),
        part("tail", ellipsoid([-0.6 * s, 0.5, 0.0], [0.25, 0.03, 0.15])),
        part("legs", cuboid([0.0, 0.12, 0.0], [0.03, 0.12, 0.12])),
    ]
}

fn fish(j: &mut Jitter) -> Vec<NamedPart> {
    let l = j.j(1.0);
    vec![
        part("body", ellipsoid([0.0, 0.0, 0.0], [l, 0.35, 0.18])),
        part("tail fin", ellipsoid([-l - 0.2, 0.0, 0.0], [0.2, 0.3, 0.03])),
        part("dorsal fin", ellipsoid([0.0, 0.38, 0.0], [0.3, 0.15, 0.02])),
        part("left fin", ellipsoid([0.3, -0.1, 0.2], [0.15, 0.03, 0.1])),
        part("right fin", ellipsoid([0.3, -0.1, -0.2], [0.15, 0.03, 0.1])),
    ]
}

fn turtle(j: &mut Jitter) -> Vec<NamedPart> {
    let r = j.j(0.7);
    let mut p = vec![
        part("shell", ellipsoid([0.0, 0.3, 0.0], [r, 0.3, r * 0.8])),
        part("head", sphere([r + 0.15, 0.3, 0.0], 0.15)),
    ];
    p.extend(legs(j, "leg", [r * 0.6, r * 0.6], 0.25, 0.0, 0.1));
    p
}

fn spider(j: &mut Jitter) -> Vec<NamedPart> {
    let mut p = vec![
        part("abdomen", sphere([-0.4, 0.45, 0.0], j.j(0.35))),
        part("cephalothorax", sphere([0.05, 0.4, 0.0], 0.2)),
    ];
    for i in 0..8 {
        let side = if i < 4 { 1.0 } else { -1.0 };
        let x = 0.25 - (i % 4) as f32 * 0.15;
        p.push(part("leg", frustum([x * 0.5, 0.4, side * 0.1], [x * 1.6, 0.0, side * 0.7], 0.03, 0.02)));
    }
    p
}

fn butterfly(j: &mut Jitter) -> Vec<NamedPart> {
    let w = j.j(0.6);
    vec![
        part("body", ellipsoid([0.0, 0.0, 0.0], [0.06, 0.06, 0.45])),
        part("left forewing", ellipsoid([w, 0.0, 0.15], [w, 0.01, 0.3])),
        part("right forewing", ellipsoid([-w, 0.0, 0.15], [w, 0.01, 0.3])),
        part("left hindwing", ellipsoid([w * 0.7, 0.0, -0.25], [w * 0.7, 0.01, 0.22])),
        part("right hindwing", ellipsoid([-w * 0.7, 0.0, -0.25], [w * 0.7, 0.01, 0.22])),
    ]
}

fn humanoid(j: &mut Jitter) -> Vec<NamedPart> {
    let h = j.j(1.0);
    vec![
        part("torso", cuboid([0.0, 1.25 * h, 0.0], [0.3, 0.4 * h, 0.15])),
        part("head", sphere([0.0, 1.9 * h, 0.0], 0.2)),
        part("left arm", cylinder([0.38, 1.6 * h, 0.0], [0.45, 0.95 * h, 0.0], 0.07)),
        part("right arm", cylinder([-0.38, 1.6 * h, 0.0], [-0.45, 0.95 * h, 0.0], 0.07)),
        part("left leg", cylinder([0.15, 0.85 * h, 0.0], [0.17, 0.0, 0.0], 0.1)),
        part("right leg", cylinder([-0.15, 0.85 * h, 0.0], [-0.17, 0.0, 0.0], 0.1)),
    ]
}

fn snowman(j: &mut Jitter) -> Vec<NamedPart> {
    let r = j.j(0.6);
    vec![
        part("bottom ball", sphere([0.0, r, 0.0], r)),
        part("middle ball", sphere([0.0, 2.0 * r + 0.3, 0.0], r * 0.7)),
        part("head", sphere([0.0, 2.0 * r + 0.95, 0.0], r * 0.45)),
        part("hat", cylinder([0.0, 2.0 * r + 1.15, 0.0], [0.0, 2.0 * r + 1.5, 0.0], r * 0.3)),
        part("nose", frustum([0.0, 2.0 * r + 0.95, r * 0.4], [0.0, 2.0 * r + 0.95, r * 0.9], 0.05, 0.0)),
    ]
}

fn car(j: &mut Jitter) -> Vec<NamedPart> {
    let (l, w) = (j.j(1.4), j.j(0.7));
    let mut p = vec![
        part("body", cuboid([0.0, 0.45, 0.0], [l, 0.2, w])),
        part("cabin", cuboid([-0.1, 0.8, 0.0], [l * 0.55, j.j(0.18), w * 0.9])),
    ];
    for (x, z) in [(1.0, 1.0), (-1.0, 1.0), (1.0, -1.0), (-1.0, -1.0)] {
        let c = [x * l * 0.65, 0.25, z * (w + 0.02)];
        p.push(part("wheel", cylinder([c[0], c[1], c[2] - 0.08], [c[0], c[1], c[2] + 0.08], 0.25)));
    }
    p
}

fn two_wheeler(j: &mut Jitter) -> Vec<NamedPart> {
    let l = j.j(0.6);
    vec![
        part("front wheel", torus([l, 0.35, 0.0], [0.0, 0.0, 1.0], 0.33, 0.04)),
        part("rear wheel", torus([-l, 0.35, 0.0], [0.0, 0.0, 1.0], 0.33, 0.04)),
        part("frame", cylinder([-l, 0.35, 0.0], [l * 0.7, 0.85, 0.0], 0.04)),
        part("handlebar", cylinder([l * 0.75, 1.0, -0.3], [l * 0.75, 1.0, 0.3], 0.03)),
        part("seat", ellipsoid([-l * 0.3, 0.95, 0.0], [0.18, 0.05, 0.08])),
    ]
}

fn airplane(j: &mut Jitter) -> Vec<NamedPart> {
    let l = j.j(1.6);
    vec![
        part("fuselage", ellipsoid([0.0, 0.0, 0.0], [l, 0.2, 0.2])),
        part("wings", cuboid([0.1, 0.0, 0.0], [0.3, 0.03, j.j(1.4)])),
        part("tail", cuboid([-l + 0.15, 0.3, 0.0], [0.15, 0.3, 0.03])),
        part("stabilizer", cuboid([-l + 0.15, 0.05, 0.0], [0.12, 0.02, 0.45])),
        part("left engine", cylinder([0.4, -0.18, 0.6], [-0.1, -0.18, 0.6], 0.09)),
        part("right engine", cylinder([0.4, -0.18, -0.6], [-0.1, -0.18, -0.6], 0.09)),
    ]
}

fn helicopter(j: &mut Jitter) -> Vec<NamedPart> {
    vec![
        part("cabin", ellipsoid([0.0, 0.6, 0.0], [0.6, 0.4, 0.35])),
        part("tail boom", frustum([-0.4, 0.7, 0.0], [-j.j(1.6), 0.85, 0.0], 0.1, 0.05)),
        part("main rotor", cuboid([0.0, 1.1, 0.0], [j.j(1.5), 0.01, 0.06])),
        part("mast", cylinder([0.0, 0.95, 0.0], [0.0, 1.1, 0.0], 0.04)),
        part("skids", cuboid([0.0, 0.05, 0.0], [0.6, 0.03, 0.35])),
    ]
}

fn boat(j: &mut Jitter) -> Vec<NamedPart> {
    let l = j.j(1.5);
    vec![
        part("hull", ellipsoid([0.0, 0.0, 0.0], [l, 0.3, 0.45])),
        part("cabin", cuboid([-0.2, 0.45, 0.0], [0.45, j.j(0.2), 0.3])),
        part("mast", cylinder([0.3, 0.2, 0.0], [0.3, 1.2, 0.0], 0.03)),
    ]
}

fn sailboat(j: &mut Jitter) -> Vec<NamedPart> {
    let l = j.j(1.4);
    vec![
        part("hull", ellipsoid([0.0, 0.0, 0.0], [l, 0.25, 0.4])),
        part("mast", cylinder([0.1, 0.1, 0.0], [0.1, 2.2, 0.0], 0.035)),
        part("sail", frustum([-0.45, 0.45, 0.0], [0.05, 2.0, 0.0], 0.5, 0.02)),
    ]
}

fn train(j: &mut Jitter) -> Vec<NamedPart> {
    let l = j.j(1.5);
    let mut p = vec![
        part("boiler", cylinder([-0.2, 0.65, 0.0], [l, 0.65, 0.0], 0.35)),
        part("cab", cuboid([-0.5, 0.85, 0.0], [0.35, 0.45, 0.4])),
        part("chimney", frustum([l - 0.3, 0.95, 0.0], [l - 0.3, 1.35, 0.0], 0.1, 0.15)),
    ];
    for x in [-0.5, 0.3, 1.1] {
        for z in [-0.42, 0.42] {
            p.push(part("wheel", cylinder([x, 0.25, z - 0.04], [x, 0.25, z + 0.04], 0.25)));
        }
    }
    p
}

fn rocket(j: &mut Jitter) -> Vec<NamedPart> {
    let h = j.j(2.2);
    vec![
        part("body", cylinder([0.0, 0.3, 0.0], [0.0, h, 0.0], 0.3)),
        part("nose cone", frustum([0.0, h, 0.0], [0.0, h + 0.6, 0.0], 0.3, 0.0)),
        part("fins", cuboid([0.0, 0.45, 0.0], [0.6, 0.3, 0.03])),
        part("nozzle", frustum([0.0, 0.3, 0.0], [0.0, 0.0, 0.0], 0.18, 0.25)),
    ]
}

/// Generic assembly: a body with `n − 1` evenly spaced rounded appendages.
fn generic(j: &mut Jitter, n: usize) -> Vec<NamedPart> {
    let mut p = vec![part("body", ellipsoid([0.0, 0.6, 0.0], [j.j(0.7), j.j(0.5), 0.5]))];
    for i in 1..n {
        let a = std::f32::consts::TAU * i as f32 / (n - 1) as f32;
        let c = [0.85 * a.cos(), 0.6 + 0.35 * (a * 2.0).sin(), 0.7 * a.sin()];
        p.push(part(&format!("part {}", i + 1), sphere(c, j.j(0.22))));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_builds_valid_closed_parts() {
        for (keys, name, f) in TEMPLATES {
            let parts = f(&mut Jitter(Rng::new(1)));
            assert!(!parts.is_empty(), "{name}");
            for p in &parts {
                p.mesh.validate().unwrap_or_else(|e| panic!("{name}/{}: {e}", p.name));
                assert!(p.mesh.area() > 0.0, "{name}/{}", p.name);
            }
            assert_eq!(template_name(keys[0]), Some(*name));
        }
    }

    #[test]
    fn keywords_generic_and_part_caps() {
        assert_eq!(template_name("office chair"), Some("chair"));
        assert_eq!(template_name("bald eagle"), Some("bird"));
        assert_eq!(template_name("cats"), Some("quadruped"));
        assert_eq!(template_name("carpet"), None);
        let g = build("zorblax", Some(5), 3);
        assert_eq!(g.len(), 5);
        assert_eq!(g[0].name, "body");
        let c = build("chair", Some(3), 3);
        assert_eq!(c.len(), 3);
        assert_eq!(build("chair", None, 9).len(), 6);
        let a = build("eagle", None, 7);
        let b = build("eagle", None, 7);
        assert_eq!(
            a.iter().map(|p| p.mesh.clone()).collect::<Vec<_>>(),
            b.iter().map(|p| p.mesh.clone()).collect::<Vec<_>>()
        );
    }
}
