# PVH entry of the vmkit test guests.
#
# PVH entry state: 32-bit protected mode, paging off, flat 4 GiB code and data segments,
# interrupts off, %ebx = physical address of `struct hvm_start_info`. Other registers and
# EFLAGS.DF are unspecified.
#
# This code switches to long mode with the static page tables below (identity map of the first
# 4 GiB with 2 MiB pages: the tables are built by the assembler, so no guest instruction fills
# them), loads a 64-bit GDT, enables SSE, zeroes .bss and calls `rust_main(start_info)`, which
# the guest defines with `guest_rt::entry!`.

    .section .text.pvh_start, "ax"
    .code32
    .global pvh_start
pvh_start:
    cld
    movl    $pml4, %eax
    movl    %eax, %cr3
    movl    %cr4, %eax
    orl     $0x620, %eax                # PAE | OSFXSR | OSXMMEXCPT
    movl    %eax, %cr4
    movl    $0xc0000080, %ecx           # IA32_EFER
    rdmsr
    orl     $0x100, %eax                # LME
    wrmsr
    movl    %cr0, %eax
    andl    $0xfffffffb, %eax           # clear EM
    orl     $0x80000002, %eax           # PG | MP
    movl    %eax, %cr0
    lgdtl   gdt64_ptr
    ljmpl   $0x08, $long_mode_start

    .code64
long_mode_start:
    movw    $0x10, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    xorl    %eax, %eax
    movw    %ax, %fs
    movw    %ax, %gs
    movl    $__stack_top, %esp          # zero-extends into %rsp
    movl    $__bss_start, %edi
    movl    $__bss_end, %ecx
    subl    %edi, %ecx
    shrl    $3, %ecx
    rep stosq                           # %rax is zero
    movl    %ebx, %edi                  # start_info, zero-extended: first argument
    call    rust_main
1:  hlt
    jmp     1b

# The PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY (18), owner "Xen", descriptor = the 32-bit
# physical entry address. The descriptor is 8 bytes wide as in Linux: loaders of ELF64 images
# read it as a 64-bit value.
    .section .note.pvh, "a", @note
    .balign 4
    .long   4                           # n_namesz
    .long   8                           # n_descsz
    .long   18                          # n_type = XEN_ELFNOTE_PHYS32_ENTRY
    .asciz  "Xen"
    .quad   pvh_start

# 64-bit GDT: null, code (0x08), data (0x10). The accessed bits are preset so the CPU never
# writes the descriptors.
    .section .rodata.gdt64, "a"
    .balign 8
gdt64:
    .quad   0
    .quad   0x00af9b000000ffff
    .quad   0x00cf93000000ffff
gdt64_end:
gdt64_ptr:
    .word   gdt64_end - gdt64 - 1
    .long   gdt64

# Page tables: PML4[0] -> PDPT, PDPT[0..4] -> four page directories of 2 MiB pages
# (present | writable | page size) covering [0, 4 GiB).
    .section .data.page_tables, "aw"
    .balign 4096
pml4:
    .quad   pdpt + 0x3
    .fill   511, 8, 0
pdpt:
    .quad   pd + 0x0003
    .quad   pd + 0x1003
    .quad   pd + 0x2003
    .quad   pd + 0x3003
    .fill   508, 8, 0
pd:
    .set    page, 0
    .rept   2048
    .quad   (page << 21) | 0x83
    .set    page, page + 1
    .endr
