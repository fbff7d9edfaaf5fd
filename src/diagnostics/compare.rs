//! How far a result is from its reference: one relative L2 for the golden cases, the
//! benchmark checks and the device self-check, so a number one of them prints means the
//! same in the others. Computed in f64 on the host, whatever the tensors' device and dtype.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// ‖got − want‖₂ / ‖want‖₂ over paired values (‖got − want‖₂ when want is all zeros).
pub fn rel_l2_values(pairs: impl IntoIterator<Item = (f64, f64)>) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (g, w) in pairs {
        num += (g - w).powi(2);
        den += w * w;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// [`rel_l2_values`] of two tensors. Shapes must match.
pub fn rel_l2(got: &Tensor, want: &Tensor) -> Result<f64> {
    let (g, w) = pair(got, want)?;
    Ok(rel_l2_values(g.into_iter().zip(w)))
}

/// ‖got − want‖₂ / ‖want − mean(want)‖₂ (outputs whose large mean would hide an error).
pub fn centered_rel_l2(got: &Tensor, want: &Tensor) -> Result<f64> {
    let (g, w) = pair(got, want)?;
    let mean = w.iter().sum::<f64>() / w.len().max(1) as f64;
    let num: f64 = g.iter().zip(&w).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = w.iter().map(|b| (b - mean).powi(2)).sum();
    Ok((num / den).sqrt())
}

fn pair(got: &Tensor, want: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    if got.dims() != want.dims() {
        bail!("shape {:?} vs reference {:?}", got.dims(), want.dims());
    }
    let v = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
    };
    Ok((v(got)?, v(want)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_to_the_reference_and_absolute_against_zeros() {
        let want = Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap();
        let got = Tensor::new(&[3f32, 4.5], &Device::Cpu).unwrap();
        assert!((rel_l2(&got, &want).unwrap() - 0.1).abs() < 1e-12);
        let zeros = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        assert!((rel_l2(&got, &zeros).unwrap() - (9.0f64 + 20.25).sqrt()).abs() < 1e-9);
        assert!(rel_l2(&got, &Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()).is_err());
    }
}
