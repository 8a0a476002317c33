"""The distributed batch job: block plan, driver, actors, and the types they share."""
