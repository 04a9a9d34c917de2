/*-------------------------------------------------------------------------
 *
 * answer_buffer.h
 *	  How far a worker grows the buffer an answer arrives in, within
 *	  igny8_ai.answer_memory (http.c, write_callback); pure code, shared by
 *	  the extension and the unit test.
 *
 * src/answer_buffer.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef IGNY8_ANSWER_BUFFER_H
#define IGNY8_ANSWER_BUFFER_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The new size of an answer's buffer of cap bytes that must hold need bytes
 * (what it has, the new piece and a NUL): double it (16 kB at least), never
 * past max + 1 (the largest answer and its NUL).  held is every byte the
 * worker holds for answers, this buffer's cap included; budget is
 * igny8_ai.answer_memory.  Near the budget, grow by an eighth, up to what
 * is left of it: doubling would refuse an answer of a little over half the
 * budget that fits it, and growing by each piece would copy the buffer at
 * every piece.  A budget lowered by a reload below what the others hold
 * leaves nothing for this one.  0 when need does not fit in what is left, with *alone set
 * when it would not fit in all of the budget either (no retry can help).
 */
static inline size_t
igny8_answer_buffer_size(size_t need, size_t cap, size_t max, size_t held,
						 size_t budget, bool *alone)
{
	size_t		others = held - cap;	/* what the other answers hold */
	size_t		size = Max(cap * 2, need);

	*alone = false;
	size = Max(size, 16384);
	size = Min(size, max + 1);
	size = Max(size, need);
	if (others >= budget || size > budget - others)
	{
		/*
		 * Nothing is left when the others hold all of the budget or more
		 * (it was lowered by a reload below what they hold): budget -
		 * others would wrap around to a huge size.
		 */
		size_t		left = (others >= budget) ? 0 : budget - others;

		if (need > left)
		{
			*alone = (need > budget);
			return 0;
		}
		size = Min(Max(need, cap + cap / 8), left);
	}
	return size;
}

#endif							/* IGNY8_ANSWER_BUFFER_H */
