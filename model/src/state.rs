//! Explicit per-slot LSTM state: the `(h, c)` of every layer for every slot.
//!
//! Layout is PyTorch's `h0`/`c0`: `[layers, slots, hidden]`. Setting a layer's state checks the
//! shape and fails loudly (`layer 0 h: expected (10, 8), got (10, 2)`), the `K.set_value`
//! behaviour the seed needed rather than the silent replacement it got.

use crate::error::{ModelError, check_finite};

/// `(h, c)` of every layer for a set of slots.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotStates {
    layers: usize,
    slots: usize,
    hidden: usize,
    /// `[layers, slots, hidden]`.
    h: Vec<f32>,
    /// `[layers, slots, hidden]`.
    c: Vec<f32>,
}

impl SlotStates {
    /// All-zero states.
    pub fn zeros(layers: usize, slots: usize, hidden: usize) -> Self {
        let n = layers * slots * hidden;
        Self {
            layers,
            slots,
            hidden,
            h: vec![0.0; n],
            c: vec![0.0; n],
        }
    }

    /// States from flat `[layers, slots, hidden]` vectors, checked for shape and finiteness.
    pub fn from_flat(
        layers: usize,
        slots: usize,
        hidden: usize,
        h: Vec<f32>,
        c: Vec<f32>,
    ) -> Result<Self, ModelError> {
        let want = [layers, slots, hidden];
        let n = layers * slots * hidden;
        if h.len() != n {
            return Err(ModelError::Shape {
                what: "h".into(),
                expected: format!("{} values for {}", n, crate::error::fmt_shape(&want)),
                got: format!("{} values", h.len()),
            });
        }
        if c.len() != n {
            return Err(ModelError::Shape {
                what: "c".into(),
                expected: format!("{} values for {}", n, crate::error::fmt_shape(&want)),
                got: format!("{} values", c.len()),
            });
        }
        check_finite("h", &h)?;
        check_finite("c", &c)?;
        Ok(Self {
            layers,
            slots,
            hidden,
            h,
            c,
        })
    }

    /// Layers.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Hidden units.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// All `h`, `[layers, slots, hidden]`.
    pub fn h(&self) -> &[f32] {
        &self.h
    }

    /// All `c`, `[layers, slots, hidden]`.
    pub fn c(&self) -> &[f32] {
        &self.c
    }

    /// Mutable `h` and `c` together.
    pub fn hc_mut(&mut self) -> (&mut [f32], &mut [f32]) {
        (&mut self.h, &mut self.c)
    }

    /// Layer `k`'s `h`, `[slots, hidden]`.
    pub fn layer_h(&self, k: usize) -> &[f32] {
        let n = self.slots * self.hidden;
        &self.h[k * n..(k + 1) * n]
    }

    /// Layer `k`'s `c`, `[slots, hidden]`.
    pub fn layer_c(&self, k: usize) -> &[f32] {
        let n = self.slots * self.hidden;
        &self.c[k * n..(k + 1) * n]
    }

    /// Replaces layer `k`'s `h` with a `[rows, cols]` matrix; the shape must be `(slots, hidden)`.
    pub fn set_h(&mut self, k: usize, value: &[f32], shape: [usize; 2]) -> Result<(), ModelError> {
        self.set(k, 'h', value, shape)
    }

    /// Replaces layer `k`'s `c` with a `[rows, cols]` matrix; the shape must be `(slots, hidden)`.
    pub fn set_c(&mut self, k: usize, value: &[f32], shape: [usize; 2]) -> Result<(), ModelError> {
        self.set(k, 'c', value, shape)
    }

    fn set(
        &mut self,
        k: usize,
        which: char,
        value: &[f32],
        shape: [usize; 2],
    ) -> Result<(), ModelError> {
        let what = format!("layer {k} {which}");
        if k >= self.layers {
            return Err(ModelError::Shape {
                what: format!("layer {k}"),
                expected: format!("a layer index below {}", self.layers),
                got: k.to_string(),
            });
        }
        let want = [self.slots, self.hidden];
        if shape != want {
            return Err(ModelError::shape(what, &want, &shape));
        }
        if value.len() != self.slots * self.hidden {
            return Err(ModelError::Shape {
                what,
                expected: format!("{} values", self.slots * self.hidden),
                got: format!("{} values", value.len()),
            });
        }
        check_finite(&what, value)?;
        let n = self.slots * self.hidden;
        let dst = if which == 'h' {
            &mut self.h
        } else {
            &mut self.c
        };
        dst[k * n..(k + 1) * n].copy_from_slice(value);
        Ok(())
    }

    /// The states of the given slots (indices into this set), in that order.
    pub fn gather(&self, slots: &[usize]) -> Self {
        let mut out = Self::zeros(self.layers, slots.len(), self.hidden);
        let hd = self.hidden;
        for k in 0..self.layers {
            for (i, &s) in slots.iter().enumerate() {
                let src = (k * self.slots + s) * hd;
                let dst = (k * slots.len() + i) * hd;
                out.h[dst..dst + hd].copy_from_slice(&self.h[src..src + hd]);
                out.c[dst..dst + hd].copy_from_slice(&self.c[src..src + hd]);
            }
        }
        out
    }

    /// Writes `part` (states of `slots`, in that order) into this set.
    pub fn scatter(&mut self, slots: &[usize], part: &Self) {
        assert_eq!(part.slots, slots.len(), "scatter: slot count");
        let hd = self.hidden;
        for k in 0..self.layers {
            for (i, &s) in slots.iter().enumerate() {
                let dst = (k * self.slots + s) * hd;
                let src = (k * slots.len() + i) * hd;
                self.h[dst..dst + hd].copy_from_slice(&part.h[src..src + hd]);
                self.c[dst..dst + hd].copy_from_slice(&part.c[src..src + hd]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_shape_is_loud() {
        let mut s = SlotStates::zeros(2, 10, 8);
        let e = s.set_h(0, &[0.0; 20], [10, 2]).unwrap_err().to_string();
        assert_eq!(e, "layer 0 h: expected (10, 8), got (10, 2)");
        let e = s.set_c(1, &[0.0; 80], [8, 10]).unwrap_err().to_string();
        assert_eq!(e, "layer 1 c: expected (10, 8), got (8, 10)");
        let e = s.set_h(2, &[0.0; 80], [10, 8]).unwrap_err().to_string();
        assert!(e.contains("layer 2") && e.contains("below 2"), "{e}");
        let mut bad = vec![0.0; 80];
        bad[5] = f32::NAN;
        let e = s.set_h(0, &bad, [10, 8]).unwrap_err().to_string();
        assert!(e.contains("layer 0 h") && e.contains("index 5"), "{e}");
    }

    #[test]
    fn set_read_gather_scatter() {
        let mut s = SlotStates::zeros(2, 3, 2);
        s.set_h(1, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2]).unwrap();
        s.set_c(0, &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0], [3, 2])
            .unwrap();
        assert_eq!(s.layer_h(1), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let g = s.gather(&[2, 0]);
        assert_eq!(g.layer_h(1), &[5.0, 6.0, 1.0, 2.0]);
        assert_eq!(g.layer_c(0), &[11.0, 12.0, 7.0, 8.0]);
        let mut t = SlotStates::zeros(2, 3, 2);
        t.scatter(&[2, 0], &g);
        assert_eq!(t.layer_h(1), &[1.0, 2.0, 0.0, 0.0, 5.0, 6.0]);
        let e = SlotStates::from_flat(2, 3, 2, vec![0.0; 11], vec![0.0; 12]).unwrap_err();
        assert!(e.to_string().contains("12 values"), "{e}");
    }
}
