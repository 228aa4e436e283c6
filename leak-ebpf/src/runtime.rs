//! What both builds of the programs need besides the programs: the panic handler and the
//! license section.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a program that passed the verifier: code paths that could panic are
    // written so that the compiler removes them.
    loop {}
}

// GPL-compatible: bpf_get_stack and bpf_probe_read_user are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
