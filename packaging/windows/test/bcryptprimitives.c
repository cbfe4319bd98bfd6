/* TEST ONLY, never shipped. Wine 8.0 (Debian 12) lacks bcryptprimitives.dll, which Rust's std
   imports for ProcessPrng; real Windows 10+ has it. Built with mingw by tests/packaging_windows.rs. */
#include <windows.h>
#include <ntsecapi.h>

BOOL WINAPI ProcessPrng(PBYTE p, SIZE_T n)
{
    while (n) {
        ULONG k = n > 0x10000000 ? 0x10000000 : (ULONG)n;
        if (!RtlGenRandom(p, k))
            return FALSE;
        p += k;
        n -= k;
    }
    return TRUE;
}
