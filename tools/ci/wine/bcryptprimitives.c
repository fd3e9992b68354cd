/* A stand-in for Windows' bcryptprimitives.dll, for running the Windows test binaries under
 * Debian's Wine 8, which lacks it. Rust's standard library (1.78 and later) takes its random
 * bytes (HashMap keys) from `ProcessPrng` in that DLL; Windows 10 and later have it, Wine 8
 * does not, so a Rust .exe stops at start-up there. This one export forwards to
 * `RtlGenRandom` (advapi32's `SystemFunction036`), which Wine has. Test-only: it is copied
 * into the Wine prefix by tools/ci/windows_tests.sh and never shipped. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
