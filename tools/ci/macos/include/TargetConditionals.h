/* The macros of Apple's <TargetConditionals.h> for macOS on Apple silicon, for the macOS check
 * (tools/ci/macos_check.sh) on a machine without Apple's SDK. ring's C sources include this
 * header only to read these macros; nothing compiled with it is ever linked or run. */
#ifndef LOOPBACK_STUB_TARGET_CONDITIONALS_H
#define LOOPBACK_STUB_TARGET_CONDITIONALS_H
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#define TARGET_OS_IOS 0
#define TARGET_OS_MACCATALYST 0
#define TARGET_OS_WATCH 0
#define TARGET_OS_TV 0
#define TARGET_OS_VISION 0
#define TARGET_OS_SIMULATOR 0
#define TARGET_OS_EMBEDDED 0
#define TARGET_CPU_ARM64 1
#define TARGET_CPU_X86_64 0
#define TARGET_RT_LITTLE_ENDIAN 1
#define TARGET_RT_64_BIT 1
#endif
