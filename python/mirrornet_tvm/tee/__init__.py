"""The CPM inside an OP-TEE trusted application.

    package    `mirrornet package-ta`: the TA template + generated CPM -> signed <uuid>.ta (dev kit)
               and <uuid>.sim (host TEE simulator); sizes checked against the Raspberry Pi 3 budget
    session    TeeSession: the TA's commands over the GP TEE Client API (ctypes over libteec: the
               simulator's library here, libteec.so.1 on a board)
    protected  protected inference: backbone on the Relax VM, taps to the TA, results and timings
    qemu       the same TA inside a real OP-TEE secure world under QEMU

The contract between the TA and its clients is ta/include/mirrornet_ta.h (read by ``abi``).
"""
