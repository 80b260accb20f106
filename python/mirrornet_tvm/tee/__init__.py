"""The CPM inside an OP-TEE trusted application.

    package     `mirrornet package-ta`: the TA template + generated CPM -> signed <uuid>.ta (dev kit)
                and <uuid>.sim (host TEE simulator); sizes checked against the Raspberry Pi 3 budget
      host_build    the TA compiled for the host simulator (src/tee_sim), TA-environment checks
      devkit        the OP-TEE TA dev kit: build, sign, encrypt, verify
      elf_sizes     text / rodata / data / bss of an ELF
      budget        the Raspberry Pi 3's secure memory and the TA's footprint
    session     TeeSession: the TA's commands over the GP TEE Client API
      teec          ctypes over libteec: the simulator's library here, libteec.so.1 on a board
      abi           the TA's contract, read from ta/include/mirrornet_ta.h
    protected   protected inference: backbone on the Relax VM, taps to the TA, results and timings
    qemu        the same TA inside a real OP-TEE secure world under QEMU
    sources     where the TA template, the simulator's sources and library live
"""
