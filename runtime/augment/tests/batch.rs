//! Batch augmentation: per-image streams make the views independent of threading and order.

use fieldtune_augment::{augment_batch, augment_batch_par, Image8, RandAugment};

fn images(n: usize) -> Vec<Image8> {
    (0..n)
        .map(|i| {
            let px = (0..28 * 28)
                .map(|p| ((p * 13 + i * 29) % 256) as u8)
                .collect();
            Image8::new(28, 28, 1, px).expect("sized")
        })
        .collect()
}

#[test]
fn threaded_batches_equal_sequential_ones() {
    let imgs = images(13);
    let refs: Vec<&Image8> = imgs.iter().collect();
    let aug = RandAugment::default();
    let seq = augment_batch(&aug, &refs, 7);
    for threads in [1, 2, 3, 5, 64] {
        assert_eq!(
            augment_batch_par(&aug, &refs, 7, threads),
            seq,
            "{threads} threads"
        );
    }
    assert_ne!(augment_batch(&aug, &refs, 8), seq, "the seed matters");
    assert_ne!(seq[0], seq[1], "images get their own streams");
}
