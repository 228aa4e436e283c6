//! Types shared between leak's BPF programs (`leak-ebpf`) and its user-space side (`leak-user`).
//!
//! Design constraints:
//! - Every type that crosses the kernel boundary is `#[repr(C)]`, `Copy`, fixed-size and has
//!   explicit padding: the BPF side writes raw bytes, the user side reads them back as `Pod`.
//! - No `bool` fields (hidden padding, and the verifier needs every byte initialized).
//! - Enum discriminants are explicit and stable: they index counter arrays and appear in reports.
//!   Add new ones at the end; never reuse a retired number.
#![no_std]
#![deny(missing_docs)]

mod calls;
mod counters;
mod faults;
mod records;
mod sampling;
mod stacks;
mod unwind;

pub use calls::*;
pub use counters::*;
pub use faults::*;
pub use records::*;
pub use sampling::*;
pub use stacks::*;
pub use unwind::*;

const _: () = assert!(core::mem::size_of::<UnwindRow>() == 12);

// Layouts are part of the kernel/user contract: fail the build if they drift.
const _: () = assert!(core::mem::size_of::<AllocKey>() == 16);

const _: () = assert!(core::mem::size_of::<AllocInfo>() == 32);

const _: () = assert!(core::mem::align_of::<AllocInfo>() == 8);

const _: () = assert!(core::mem::offset_of!(AllocInfo, tgid) == ALLOC_INFO_OWNER_OFFSET);

const _: () = assert!(core::mem::size_of::<AllocBucket>() == 320);

const _: () = assert!(core::mem::size_of::<SiteBucket>() == 224);

const _: () = assert!(core::mem::size_of::<StackMemo>() == 72);

const _: () = assert!(core::mem::size_of::<WalkState>() == 112);

const _: () = assert!(core::mem::size_of::<UnmapScratch>() == 96);

const _: () =
    assert!(core::mem::size_of::<Pending>() == 128 + 72 + 112 + 96 + STACK_WINDOW_WORDS * 8);

const _: () = assert!(core::mem::size_of::<SiteKey>() == 16);

const _: () = assert!(core::mem::size_of::<SiteTotal>() == 16);

const _: () = assert!(core::mem::size_of::<StackTrace>() == 8 * MAX_STACK_DEPTH);

const _: () = assert!(DropReason::ALL.len() <= COUNTER_SLOTS as usize);

#[cfg(feature = "user")]
mod user {
    use super::{
        AllocBucket, AllocInfo, AllocKey, Pending, ProcessMaps, SiteBucket, SiteKey, SiteTotal,
        StackTrace, UnwindMap, UnwindRow,
    };

    // SAFETY: all three are `#[repr(C)]`, `Copy`, contain only integers and have no padding
    // (checked by the size assertions above), so any byte pattern is a valid value.
    unsafe impl aya::Pod for AllocInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AllocKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AllocBucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SiteBucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Pending {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackTrace {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SiteKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SiteTotal {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UnwindRow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ProcessMaps {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UnwindMap {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn drop_values_and_hit_indexes_are_stable() {
        // These numbers are on the wire and in saved reports: changing one is a breaking change.
        let drops: std::vec::Vec<(u32, &str)> =
            DropReason::ALL.iter().map(|d| (*d as u32, d.name())).collect();
        assert_eq!(
            drops,
            [
                (0, "alloc_map_full"),
                (1, "stack_missing"),
                (2, "stack_map_full"),
                (3, "missing_entry"),
                (4, "unknown_free"),
                (5, "pending_full"),
                (6, "stale_pending"),
                (7, "read_failed"),
                (8, "unmap_overflow"),
                (9, "site_map_full"),
                (10, "unmap_unchecked"),
                (11, "unknown_hook"),
                (12, "page_map_full"),
                (13, "fault_in_kernel"),
            ]
        );
        assert_eq!(hit_index(0, false), 0);
        assert_eq!(hit_index(1, true), 3);
        assert_eq!(hit_index(MAX_HOOKS - 1, true), COUNTER_SLOTS - 1);
    }

    #[test]
    fn program_names_are_distinct() {
        let names: std::collections::BTreeSet<&str> =
            Program::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), Program::ALL.len());
        assert_eq!(Program::ALL.iter().filter(|p| p.is_return()).count(), 5);
    }

    #[test]
    fn stack_frames_stop_at_first_zero() {
        let mut s = StackTrace { ips: [0; MAX_STACK_DEPTH] };
        s.ips[0] = 0x10;
        s.ips[1] = 0x20;
        assert_eq!(s.frames(), &[0x10, 0x20]);
        s.ips = [7; MAX_STACK_DEPTH];
        assert_eq!(s.frames().len(), MAX_STACK_DEPTH);
    }

    #[test]
    fn alloc_layout_holds_the_capacity() {
        // The exact capacity below one bucket's slots (the map-full test uses 4).
        assert_eq!(alloc_layout(4), AllocLayout { buckets: 1, slots: 4, spill: 0 });
        assert_eq!(alloc_layout(1), AllocLayout { buckets: 1, slots: 1, spill: 0 });
        assert_eq!(alloc_layout(8), AllocLayout { buckets: 1, slots: 8, spill: 0 });
        assert_eq!(alloc_layout(12), AllocLayout { buckets: 1, slots: 8, spill: 6 });
        // The default: a table of 1M slots (40 MiB), and a spill map for what does not fit.
        let d = alloc_layout(DEFAULT_MAX_ALLOCS);
        assert_eq!(d, AllocLayout { buckets: 1 << 17, slots: 8, spill: 1 << 18 });
        // 10M: the table at its largest, the rest in the spill map.
        let big = alloc_layout(10_000_000);
        assert_eq!(big.buckets, MAX_ALLOC_BUCKETS);
        assert_eq!(big.spill, 10_000_000 - (4 << 20) + (1 << 20));
        for max in [1, 3, 9, 100, 1000, 5000, 1 << 20, (1 << 20) + 1, u32::MAX] {
            let l = alloc_layout(max);
            assert!(l.buckets.is_power_of_two(), "{max}: {l:?}");
            assert!(
                u64::from(l.buckets) * u64::from(l.slots) + u64::from(l.spill) >= u64::from(max),
                "{max}: {l:?}"
            );
        }
    }

    #[test]
    fn table_buckets_spread_heap_addresses() {
        // 16-byte aligned blocks of one heap, 4096 buckets: no bucket far above the mean.
        let mask = 4095;
        let mut count = std::vec![0u32; 4096];
        for i in 0..32768u64 {
            count[table_bucket(0x5555_5555_0000 + i * 48, 1234, mask) as usize] += 1;
        }
        let max = count.iter().copied().max().unwrap_or(0);
        assert!(max <= 24, "fullest bucket {max} (mean 8)");
        // The process is part of the key.
        assert_ne!(table_bucket(0x1000, 1, u32::MAX), table_bucket(0x1000, 2, u32::MAX));
    }

    #[test]
    fn owner_word_is_tgid_and_kind() {
        let a = AllocInfo { size: 1, timestamp_ns: 2, stack_id: 3, tgid: 42, kind: 7 };
        // SAFETY: AllocInfo is repr(C) with no padding.
        let bytes: [u8; 32] = unsafe { core::mem::transmute(a) };
        assert_eq!(&bytes[ALLOC_INFO_OWNER_OFFSET..], &a.owner_word().to_le_bytes());
    }

    #[test]
    fn unwind_rules_pack_into_one_scalar_and_back() {
        let rows = [
            // x86-64 with a frame pointer; aarch64 after `stp x29, x30, [sp, #-48]!` and
            // before it (the return address still in x30); extremes of each field.
            UnwindRow { pc: 0, cfa_offset: 16, fp_offset: -16, ra_offset: -1, cfa_reg: CFA_FP },
            UnwindRow { pc: 0, cfa_offset: 48, fp_offset: -48, ra_offset: -5, cfa_reg: CFA_SP },
            UnwindRow { pc: 0, cfa_offset: 0, fp_offset: FP_SAME, ra_offset: RA_IN_LR, cfa_reg: 0 },
            UnwindRow {
                pc: 0,
                cfa_offset: i32::MIN,
                fp_offset: i16::MIN,
                ra_offset: i8::MIN,
                cfa_reg: CFA_OUTERMOST,
            },
            UnwindRow {
                pc: 0,
                cfa_offset: i32::MAX,
                fp_offset: i16::MAX,
                ra_offset: i8::MAX,
                cfa_reg: u8::MAX,
            },
        ];
        for r in rows {
            assert_eq!(unpack_rule(pack_rule(r)), r);
        }
    }

    #[test]
    fn alloc_info_bytes_round_trip() {
        let a = AllocInfo { size: 4096, timestamp_ns: 5, stack_id: 0xdead_beef, tgid: 42, kind: 1 };
        // SAFETY: AllocInfo is repr(C) with no padding.
        let bytes: [u8; 32] = unsafe { core::mem::transmute(a) };
        assert_eq!(&bytes[0..8], &4096u64.to_ne_bytes());
        assert_eq!(&bytes[24..28], &42u32.to_ne_bytes());
        // SAFETY: any 32 bytes are a valid AllocInfo.
        let back: AllocInfo = unsafe { core::mem::transmute(bytes) };
        assert_eq!(back, a);
    }
}
