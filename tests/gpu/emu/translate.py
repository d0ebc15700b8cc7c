#!/usr/bin/env python3
"""Rewrite gpu/backend_cuda.cu into plain C++ for emu_cuda.h:
CUDA headers -> emu_cuda.h (cuDNN's too: dlopen & co. -> emu_dl*), kern<<<g, b, shm, stream>>>(args) -> EMU_LAUNCH_ON(g, b, shm, stream, kern, args)
(the stream, so that launches into a capturing stream are recorded; 0, the legacy stream, when none;
shm, checked against the kernel's opt-in), and each __shared__ array refilled with NaN per block.
usage: translate.py IN.cu OUT.cpp"""
import re
import sys

nshared = 0


def split_top(s):
    """split s on commas that are not inside parentheses"""
    out, depth, cur = [], 0, ''
    for ch in s:
        if ch == '(':
            depth += 1
        elif ch == ')':
            depth -= 1
        if ch == ',' and depth == 0:
            out.append(cur)
            cur = ''
        else:
            cur += ch
    out.append(cur)
    return [x.strip() for x in out]


def main():
    src = open(sys.argv[1]).read()
    src = src.replace('#include <cuda_runtime.h>', '#include "emu_cuda.h"')
    src = src.replace('#include <cublas_v2.h>', '')
    src = re.sub(r'#include <cuda\.h>.*', '', src)
    src = src.replace('#include <cuda_bf16.h>', '')
    src = src.replace('#include <mma.h>', '')
    # cuDNN comes from emu_cudnn.h, and the plugin's dlopen/dlsym hand it out
    src = src.replace('__has_include(<cudnn.h>)', '1')
    src = src.replace('#include <cudnn.h>', '')
    src = re.sub(r'\b(dlopen|dlsym|dlclose|dlerror)\(', r'emu_\1(', src)
    # dynamic shared memory: the emulator's one buffer (as large as a block may
    # opt in to, 128-byte aligned), refilled with NaN bytes at each block's start
    src = re.sub(r'extern __shared__ __align__\((\d+)\) (\w[\w ]*?) (\w+)\[\];',
                 r'static \2 *const \3 = (\2 *)emu::dyn_smem;', src)
    # static shared arrays: refilled with NaN bytes by the first of a block's
    # threads to reach the declaration (emu::shared_fresh)
    def fresh(m):
        global nshared
        names = re.findall(r'(\w+)(?:\[[^\]]*\])+', m.group(3))
        calls = ''
        for name in names:
            nshared += 1
            calls += ' static long emu_seen_%d = -1; emu::shared_fresh(%s, sizeof %s, &emu_seen_%d);' % (
                nshared, name, name, nshared)
        return '%s__shared__ %s %s;%s' % (m.group(1), m.group(2), m.group(3), calls)
    src = re.sub(r'^(\s+)__shared__ (\w+) ([^;]+);', fresh, src, flags=re.M)
    out, pos, n = [], 0, 0
    # kern<<< or a template instance kern<T><<<
    pat = re.compile(r'(\w+(?:<[\w:, ]*>)?)<<<(.*?)>>>\(', re.S)
    while True:
        m = pat.search(src, pos)
        if not m:
            break
        # find the matching ')' of the argument list
        i, depth = m.end(), 1
        while depth:
            if src[i] == '(':
                depth += 1
            elif src[i] == ')':
                depth -= 1
            i += 1
        args = src[m.end():i - 1]
        cfg = split_top(m.group(2))
        out.append(src[pos:m.start()])
        shm = cfg[2] if len(cfg) > 2 else '0'
        stream = cfg[3] if len(cfg) > 3 else '(cudaStream_t)0'
        out.append('EMU_LAUNCH_ON((%s), (%s), (%s), (%s), %s, %s)' % (cfg[0], cfg[1], shm, stream, m.group(1), args))
        pos = i
        n += 1
    out.append(src[pos:])
    open(sys.argv[2], 'w').write(''.join(out))
    sys.stderr.write('translate.py: %d launches rewritten, %d shared arrays refreshed per block\n' % (n, nshared))


main()
