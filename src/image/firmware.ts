/**
 * The minimal firmware guest: a 64 KiB `-bios` image of a few real-mode instructions, for measuring
 * the runtime itself where a Linux guest cannot run (a PVM host's KVM runs it fine). It needs no kernel,
 * no disk and no agent:
 *
 *   F000:0000  cli; xor ax,ax; mov ds,ax; mov dx,0x402
 *              mov al,'B'; out dx,al            ; boot signal on the debug port
 *              mov byte [0x500],1               ; "snapshot not yet taken"
 *   spin:      cmp byte [0x500],0; jne spin     ; the parent spins here until it is paused
 *              mov al,'R'; out dx,al            ; a child: running after restore
 *   halt:      hlt; jmp halt                    ; then idle (interrupts off: no exits at all)
 *   F000:FFF0  jmp far F000:0000                ; the reset vector
 *
 * The snapshot writer clears the flag byte in the saved RAM, so every child, resumed in the spin loop,
 * leaves it at once and signals 'R': the time from a request to that byte is the engine's own cost.
 */
export const FIRMWARE_FLAG_ADDR = 0x500;
export const BOOT_SIGNAL = 0x42; // 'B'
export const RUN_SIGNAL = 0x52; // 'R'

const CODE = [
  'fa', // cli
  '31c0', // xor ax,ax
  '8ed8', // mov ds,ax
  'ba0204', // mov dx,0x402
  'b042', // mov al,'B'
  'ee', // out dx,al
  'c606000501', // mov byte [0x500],1
  '803e000500', // spin: cmp byte [0x500],0
  '75f9', // jne spin
  'b052', // mov al,'R'
  'ee', // out dx,al
  'f4', // halt: hlt
  'ebfd', // jmp halt
].join('');
const RESET_VECTOR = 'ea000000f0'; // jmp far F000:0000

export function firmwareImage(): Buffer {
  const img = Buffer.alloc(64 << 10);
  Buffer.from(CODE, 'hex').copy(img, 0);
  Buffer.from(RESET_VECTOR, 'hex').copy(img, 0xfff0);
  return img;
}
