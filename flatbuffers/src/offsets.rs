//! Where a consumer group's coordinator lives: the leader of one partition
//! of the internal topic `__offsets`, chosen by the group id. Broker and
//! SDK both compute it here, so they always agree.

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__offsets";
/// Partitions of [`OFFSETS_TOPIC`].
pub const OFFSETS_PARTITIONS: u32 = 16;

/// The `__offsets` partition of a group: CRC-32C of its id, modulo the partition count.
pub fn offsets_partition(group_id: &str) -> u32 {
    crc32c::crc32c(group_id.as_bytes()) % OFFSETS_PARTITIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_is_stable_and_in_range() {
        // Pinned: a change would move every group's coordinator and offsets.
        assert_eq!(
            offsets_partition("billing"),
            crc32c::crc32c(b"billing") % 16
        );
        assert!((0..1000).all(|i| offsets_partition(&format!("g{i}")) < OFFSETS_PARTITIONS));
    }
}
