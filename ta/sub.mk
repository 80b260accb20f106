# Sources of the MirrorNet CPM TA (OP-TEE dev kit sub.mk).
global-incdirs-y += include
global-incdirs-y += cpm
srcs-y += mirrornet_ta.c
srcs-y += cpm/mirrornet_cpm.c
# The TA has no libm: sqrtf/fmaxf must become instructions, everything else comes from cpm/math.h.
cflags-y += -fno-math-errno
# The generated CPM and its math.h compare floats exactly and shadow builtins on purpose (bit-exact
# kernels, our own fmaxf/expf...): silence those dev kit warnings for that file only.
cflags-cpm/mirrornet_cpm.c-y += -Wno-missing-prototypes -Wno-missing-declarations -Wno-unused-parameter
cflags-cpm/mirrornet_cpm.c-y += -Wno-float-equal -Wno-shadow
# The dev kit builds with -Os, which keeps gcc from vectorising the CPM's register-tiled kernels
# (about 2.3x slower measured on the host): build the CPM itself at -O2.
cflags-cpm/mirrornet_cpm.c-y += -O2
