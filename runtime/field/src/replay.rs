//! The replay buffer: unlabeled frames at the model's input size, stored as u8 in memory
//! reserved once. Part of it is a uniform reservoir sample of every frame seen (Vitter's
//! algorithm R), the rest a ring of the most recent frames, so a round sees both the long
//! run and what the camera sees now. Each frame keeps its frame number, so a round can take
//! only the frames seen since a drift trigger ([`ReplayBuffer::recent_since`]).

use fieldtune_frames::{Image8, ImageShape};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Fixed-memory reservoir + recency buffer of frames of one shape.
pub struct ReplayBuffer {
    shape: ImageShape,
    frame_bytes: usize,
    reservoir: Vec<u8>,
    reservoir_cap: usize,
    reservoir_len: usize,
    reservoir_ids: Vec<u64>,
    recent: Vec<u8>,
    recent_ids: Vec<u64>,
    recent_cap: usize,
    recent_len: usize,
    recent_next: usize,
    seen: u64,
    rng: ChaCha8Rng,
}

impl ReplayBuffer {
    /// `capacity` frames of `shape`, `recent_fraction` of them for the most recent frames
    /// (rounded as [`crate::config::ReplayConfig::recent_capacity`] does).
    pub fn new(
        shape: ImageShape,
        capacity: usize,
        recent_fraction: f64,
        seed: u64,
    ) -> ReplayBuffer {
        let frame_bytes = shape.channels as usize * shape.height as usize * shape.width as usize;
        let recent_cap = ((capacity as f64 * recent_fraction).round() as usize).min(capacity);
        let reservoir_cap = capacity - recent_cap;
        ReplayBuffer {
            shape,
            frame_bytes,
            reservoir: vec![0; reservoir_cap * frame_bytes],
            reservoir_cap,
            reservoir_len: 0,
            reservoir_ids: vec![0; reservoir_cap],
            recent: vec![0; recent_cap * frame_bytes],
            recent_ids: vec![0; recent_cap],
            recent_cap,
            recent_len: 0,
            recent_next: 0,
            seen: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Adds frame number `frame` (ignored unless it has the buffer's shape). Never allocates.
    pub fn push(&mut self, img: &Image8, frame: u64) {
        if img.shape() != self.shape || img.data.len() != self.frame_bytes {
            return;
        }
        self.seen += 1;
        let fb = self.frame_bytes;
        if self.recent_cap > 0 {
            let i = self.recent_next;
            self.recent[i * fb..(i + 1) * fb].copy_from_slice(&img.data);
            self.recent_ids[i] = frame;
            self.recent_next = (i + 1) % self.recent_cap;
            self.recent_len = (self.recent_len + 1).min(self.recent_cap);
        }
        if self.reservoir_cap > 0 {
            let slot = if self.reservoir_len < self.reservoir_cap {
                self.reservoir_len += 1;
                Some(self.reservoir_len - 1)
            } else {
                let j = self.rng.gen_range(0..self.seen);
                (j < self.reservoir_cap as u64).then_some(j as usize)
            };
            if let Some(i) = slot {
                self.reservoir[i * fb..(i + 1) * fb].copy_from_slice(&img.data);
                self.reservoir_ids[i] = frame;
            }
        }
    }

    /// Frames held now.
    pub fn len(&self) -> usize {
        self.reservoir_len + self.recent_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames offered so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Bytes reserved for frames (constant).
    pub fn bytes(&self) -> usize {
        self.reservoir.len() + self.recent.len()
    }

    /// Copies of every frame held: the reservoir, then the recent frames oldest first.
    pub fn snapshot(&self) -> Snapshot {
        let mut out = Snapshot::with_capacity(self.len());
        let fb = self.frame_bytes;
        for (i, bytes) in self.reservoir[..self.reservoir_len * fb]
            .chunks_exact(fb)
            .enumerate()
        {
            out.push(self.image(bytes), self.reservoir_ids[i]);
        }
        self.extend_recent(&mut out, 0);
        out
    }

    /// Copies of the recent frames numbered `first` or later, oldest first: what the camera
    /// saw since a drift trigger at frame `first`, as far back as the recent part reaches.
    pub fn recent_since(&self, first: u64) -> Snapshot {
        let mut out = Snapshot::with_capacity(self.recent_len);
        self.extend_recent(&mut out, first);
        out
    }

    /// Frames held in the recent part that are numbered `first` or later.
    pub fn count_since(&self, first: u64) -> usize {
        self.recent_ids[..self.recent_len]
            .iter()
            .filter(|&&id| id >= first)
            .count()
    }

    fn extend_recent(&self, out: &mut Snapshot, first: u64) {
        let fb = self.frame_bytes;
        let start = if self.recent_len < self.recent_cap {
            0
        } else {
            self.recent_next
        };
        for k in 0..self.recent_len {
            let i = (start + k) % self.recent_cap;
            if self.recent_ids[i] >= first {
                out.push(
                    self.image(&self.recent[i * fb..(i + 1) * fb]),
                    self.recent_ids[i],
                );
            }
        }
    }

    fn image(&self, bytes: &[u8]) -> Image8 {
        Image8 {
            width: self.shape.width,
            height: self.shape.height,
            channels: self.shape.channels,
            data: bytes.to_vec(),
        }
    }
}

/// Frames copied out of the replay buffer with their frame numbers.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub frames: Vec<Image8>,
    pub ids: Vec<u64>,
}

impl Snapshot {
    fn with_capacity(n: usize) -> Snapshot {
        Snapshot {
            frames: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, img: Image8, id: u64) {
        self.frames.push(img);
        self.ids.push(id);
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The oldest frame number held (None when empty).
    pub fn oldest(&self) -> Option<u64> {
        self.ids.iter().copied().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: u32) -> Image8 {
        // 2x2 gray frame carrying the number v in its first 4 bytes.
        Image8::new(2, 2, 1, v.to_le_bytes().to_vec()).unwrap()
    }

    fn value(img: &Image8) -> u32 {
        u32::from_le_bytes(img.data[..4].try_into().unwrap())
    }

    fn shape() -> ImageShape {
        ImageShape {
            channels: 1,
            height: 2,
            width: 2,
        }
    }

    #[test]
    fn memory_is_fixed_and_recent_frames_are_the_last_ones() {
        let mut r = ReplayBuffer::new(shape(), 10, 0.5, 1);
        let bytes = r.bytes();
        assert_eq!(bytes, 10 * 4);
        for v in 0..1000 {
            r.push(&frame(v), v as u64);
        }
        assert_eq!(r.bytes(), bytes);
        assert_eq!(r.len(), 10);
        let snap = r.snapshot();
        let recent: Vec<u32> = snap.frames[5..].iter().map(value).collect();
        assert_eq!(recent, vec![995, 996, 997, 998, 999]);
        // Frames of another shape are ignored.
        r.push(&Image8::filled(3, 3, 1, 0), 1000);
        assert_eq!(r.seen(), 1000);
    }

    #[test]
    fn reservoir_is_a_uniform_sample_of_everything_seen() {
        // 200 trials of a 20-slot reservoir over 1000 frames: every tenth of the stream
        // should hold ~10% of the kept frames.
        let mut per_decile = [0usize; 10];
        for seed in 0..200 {
            let mut r = ReplayBuffer::new(shape(), 20, 0.0, seed);
            for v in 0..1000 {
                r.push(&frame(v), v as u64);
            }
            for img in r.snapshot().frames {
                per_decile[value(&img) as usize / 100] += 1;
            }
        }
        let total: usize = per_decile.iter().sum();
        assert_eq!(total, 200 * 20);
        for (d, n) in per_decile.iter().enumerate() {
            let share = *n as f64 / total as f64;
            assert!((0.08..0.12).contains(&share), "decile {d}: {share}");
        }
    }

    #[test]
    fn fills_before_replacing_and_snapshot_orders_recent_oldest_first() {
        let mut r = ReplayBuffer::new(shape(), 8, 0.5, 0);
        for v in 0..3 {
            r.push(&frame(v), v as u64);
        }
        let vals: Vec<u32> = r.snapshot().frames.iter().map(value).collect();
        assert_eq!(vals, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(r.len(), 6);
    }

    #[test]
    fn recent_since_takes_only_the_frames_after_a_trigger() {
        let mut r = ReplayBuffer::new(shape(), 16, 0.5, 3);
        for v in 0..100 {
            r.push(&frame(v), v as u64);
        }
        // The recent part holds 8 frames (92..=99); a trigger at frame 95 takes 95..=99.
        let since = r.recent_since(95);
        assert_eq!(since.ids, vec![95, 96, 97, 98, 99]);
        let vals: Vec<u32> = since.frames.iter().map(value).collect();
        assert_eq!(vals, vec![95, 96, 97, 98, 99]);
        assert_eq!(r.count_since(95), 5);
        assert_eq!(since.oldest(), Some(95));
        // A trigger older than the recent part reaches back only as far as it holds.
        assert_eq!(r.recent_since(10).ids, (92..100).collect::<Vec<u64>>());
        assert!(r.recent_since(100).is_empty());
        // The whole snapshot carries the reservoir's numbers too.
        let all = r.snapshot();
        assert_eq!(all.len(), 16);
        assert!(all.ids[..8].iter().all(|&id| id < 100));
        assert_eq!(all.ids[8..], (92..100).collect::<Vec<u64>>()[..]);
    }
}
